"""`opengato finetune`: few-shot learning on tasks pretraining never saw (the paper's section 5.2,
docs/few-shot.md).

    opengato collect --tasks heldout                                  # their demonstrations
    opengato finetune runs/demo/train --tasks heldout --demos 10      # fine-tune, evaluate
    opengato finetune runs/demo/train --demos 10 --mode prompt --retrieval
    opengato finetune runs/demo/train --demos 10 --from-scratch       # the baseline

A thin composition of the other verbs' code, as `opengato demo` is, in four stages:

1. demos   N demonstrations of each task (the first N, lowest seeds; with `--demo-seed`, N drawn
           at random), read from the data root where `opengato collect` wrote them, are copied
           into a data root of the run's own, `<out-dir>/demos` (with the tasks' rows of the
           scores table): training and prompts see those N and nothing else of the tasks;
2. train   `--mode finetune`: the checkpoint's weights (`--from-scratch`: a random init of the
           same model) trained on them by `opengato train`'s loop with the checkpoint's own
           recipe (batch, context, dtype, loss weights, prompts), a tenth of its learning rate
           (its whole rate from scratch), steps scaled to N, and early stopping on the last
           `--val-fraction` of the N demonstrations (opengato.training.train.run_train);
           `--mode prompt`: nothing, the weights stay as they are;
3. eval    `opengato eval` of the result on held-out start states (seeds from 1000000;
           demonstrations use seeds below), each episode prompted with one of the N
           demonstrations: drawn with the episode's seed, or with `--retrieval` the one whose
           first observation is nearest the episode's reset observation (agent/rollout.py);
4. report  `opengato report` of the evaluation.

`<out-dir>/finetune.json` records what was done: the resolved configs, each task's
demonstration seeds, the training summary (where early stopping stopped, the best step) and
the aggregate scores; `<out-dir>/eval.json` holds the per-task results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Literal

from tyro.conf import Positional, Suppress, arg

from opengato.agent.eval_config import EvalConfig
from opengato.batches.batch import LossWeights
from opengato.files import atomic_write_json
from opengato.tasks import near_twins
from opengato.tokens.tokenizer import TokenizerConfig
from opengato.training.config import TrainConfig

STEPS_PER_DEMO = 10
"""Default training steps per demonstration (of all tasks together), between the two bounds."""
MIN_STEPS, MAX_STEPS = 100, 5000
VALIDATIONS = 20
"""Validations a fine-tuning run makes (every steps / VALIDATIONS steps): what early stops."""


@dataclass
class FinetuneEvalConfig(EvalConfig):
    """Evaluation (`opengato eval`'s options): of the fine-tuned checkpoint (in prompt mode, the
    given one), on `--tasks`, each episode prompted with one of the N demonstrations, into
    `<out-dir>/eval.json`."""

    checkpoint: Suppress[str] = ""
    tasks: Suppress[list[str]] = field(default_factory=list)
    data_dir: Suppress[str | None] = None
    out: Suppress[str] = "runs/finetune/eval.json"
    prompt: Suppress[bool] = True
    prompt_choice: Suppress[Literal["random", "nearest"]] = "random"


@dataclass
class FinetuneConfig:
    """Fine-tune a checkpoint on N demonstrations of held-out tasks (or prompt it with them), then
    evaluate it on held-out start states."""

    checkpoint: Positional[Annotated[str, arg(metavar="CHECKPOINT")]]
    """The pretrained checkpoint: a checkpoint folder or a run folder."""
    tasks: str = "heldout"
    """Control tasks (the `--tasks` grammar): `heldout` is opengato.tasks.HELDOUT_TASKS, the
    built-in tasks that pretraining leaves out. Their demonstrations must be under --data-dir
    (`opengato collect --tasks heldout`)."""
    demos: int = 10
    """N, demonstrations per task: the first N (lowest seeds) of each task's dataset, or N drawn
    at random with --demo-seed."""
    demo_seed: int | None = None
    """Draw the N demonstrations of each task at random, without replacement, from all those
    collected, with this seed (and the task's name): different seeds see different subsets, as a
    few-shot measurement over seeds needs. Default: the first N (lowest seeds)."""
    mode: Literal["finetune", "prompt"] = "finetune"
    """`finetune`: train the weights on the N demonstrations, then evaluate; `prompt`: no
    weight update, the N demonstrations are only the prompts of the evaluation."""
    retrieval: bool = False
    """Prompt each episode with the demonstration whose first observation is nearest its reset
    observation (the same mission, then the least L2 distance over the numbers) instead of one
    drawn at random; in either mode, since evaluation always prompts."""
    from_scratch: bool = False
    """Train the same model from a random initialisation instead of the checkpoint's weights,
    at the checkpoint's learning rate (the paper's baseline, Figure 10). `--mode finetune` only."""
    seed: int = 0
    """Seeds training: the random init (--from-scratch), the batches and dropout. Evaluation
    keeps its own held-out start states (--eval.start-seed), the same for every run; which
    demonstrations are used is --demo-seed's."""
    data_dir: str | None = None
    """Data root holding the tasks' demonstrations and scores table; default `$OPENGATO_DATA` or
    `~/.opengato/data`."""
    out_dir: str = "runs/finetune"
    """Folder for the run: `demos/` (the N demonstrations), `train/`, `eval.json`,
    `finetune.json`, `report/`."""
    lr: float | None = None
    """Peak learning rate; default a tenth of the checkpoint's (its whole rate with
    --from-scratch), after a warm-up of a tenth of the steps at most."""
    steps: int | None = None
    """Most training steps; default 10 per demonstration of all tasks together (N x tasks),
    between 100 and 5000. Early stopping usually ends the run before."""
    batch_size: int | None = None
    """Sequences per step; default the checkpoint's."""
    val_fraction: float = 0.2
    """Share of the N demonstrations of each task held out to early-stop on (the last ones; at
    least one when N >= 2, none when N = 1: then the run takes all its steps)."""
    patience: int = 5
    """Stop after this many validations in a row (of 20 a run) without a lower validation
    action loss, keeping the best checkpoint; 0: never stop early."""
    device: str = "auto"
    """Training device: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, ..."""
    progress: bool = True
    """Show progress bars."""
    eval: FinetuneEvalConfig = field(
        default_factory=lambda: FinetuneEvalConfig(episodes=50, num_envs=10)
    )
    """50 rollouts per task (the paper's number) from held-out start states, 10 envs at once."""


# --------------------------------------------------------------------------- the stages' configs


def scaled_steps(demos: int, n_tasks: int) -> int:
    """Default training steps for `demos` demonstrations of each of `n_tasks` tasks.

    >>> scaled_steps(10, 9), scaled_steps(1, 1), scaled_steps(1000, 9)
    (900, 100, 5000)
    """
    return max(MIN_STEPS, min(MAX_STEPS, STEPS_PER_DEMO * demos * n_tasks))


def _from_dict(cls: type, values: dict):
    """`cls` from a recorded dict, ignoring keys it no longer has."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def pretraining_recipe(ckpt: dict) -> TrainConfig:
    """The training options a checkpoint was made with (its config.json `train`; defaults for
    what it lacks), its model's preset, context and bin init, and its tokenizer reading its own
    text model: a fine-tuning run of the same model, before the fine-tuning changes."""
    from opengato.model.checkpoint import text_model_path

    recorded = _from_dict(TrainConfig, ckpt.get("train") or {})
    tokenizer = _from_dict(TokenizerConfig, ckpt["tokenizer"])
    weights = recorded.loss_weights
    model = ckpt["model"]
    return replace(
        recorded,
        preset=model.get("name") or recorded.preset,
        context_len=model["context_len"],
        bin_init=model.get("bin_init", recorded.bin_init),
        betas=tuple(recorded.betas),
        loss_weights=_from_dict(LossWeights, weights) if isinstance(weights, dict) else weights,
        tokenizer=replace(tokenizer, text_model=str(text_model_path(ckpt))),
    )


def train_config(cfg: FinetuneConfig, ckpt: dict, tasks: list[str]) -> TrainConfig:
    """The fine-tuning run: the checkpoint's recipe on the N demonstrations of `tasks` (each
    task weighted alike), from its weights (or a random init), with fine-tuning's learning rate,
    steps, validations and early stopping, saving only its best checkpoint."""
    base = pretraining_recipe(ckpt)
    steps = cfg.steps or scaled_steps(cfg.demos, len(tasks))
    lr = cfg.lr or (base.lr if cfg.from_scratch else base.lr / 10)
    out = Path(cfg.out_dir)
    return replace(
        base,
        tasks=",".join(tasks),
        data_dir=str(out / "demos"),
        out_dir=str(out / "train"),
        shard_dir=None,
        init=None if cfg.from_scratch else ckpt["path"],
        allow_heldout_tasks=True,  # fine-tuning on them is the point
        steps=steps,
        lr=lr,
        warmup_steps=min(base.warmup_steps, steps // 10),
        batch_size=cfg.batch_size or base.batch_size,
        weights=",".join(f"{t}=1" for t in tasks),
        val_fraction=cfg.val_fraction,
        eval_every=max(1, steps // VALIDATIONS),
        early_stop=cfg.patience,
        save_every=0,
        keep_checkpoints=1,
        seed=cfg.seed,
        device=cfg.device,
        progress=cfg.progress,
        resume=False,
        resume_force=False,
    )


def eval_config(cfg: FinetuneConfig, tasks: list[str]) -> EvalConfig:
    """The evaluation (`opengato eval`'s own config): of the given checkpoint (run_finetune
    passes the fine-tuned one), prompted from the N demonstrations."""
    values = {f.name: getattr(cfg.eval, f.name) for f in fields(EvalConfig)}
    out = Path(cfg.out_dir)
    return EvalConfig(**{**values, "checkpoint": cfg.checkpoint, "tasks": tasks,
                         "data_dir": str(out / "demos"), "out": str(out / "eval.json"),
                         "prompt": True,
                         "prompt_choice": "nearest" if cfg.retrieval else "random"})  # fmt: skip


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse options that cannot run together, before any work."""
    if cfg.demos < 1:
        raise ValueError(f"--demos must be >= 1, got {cfg.demos}")
    if cfg.from_scratch and cfg.mode == "prompt":
        raise ValueError("--from-scratch trains a model: it needs --mode finetune")
    if cfg.patience < 0 or not 0 < cfg.val_fraction < 1:
        raise ValueError("--patience must be >= 0 and --val-fraction in (0, 1)")
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")


# --------------------------------------------------------------------------- the N demonstrations


def write_demos(tasks: list[str], n: int, source: str | None, dest: Path, progress: bool = True,
                draw: int | None = None) -> dict[str, list[int]]:  # fmt: skip
    """Copy `n` demonstrations of each task from the data root `source` into the data root
    `dest`, with the tasks' rows of the scores table; returns each task's demonstration seeds.
    They are the first `n` (lowest seeds), or with `draw` a seed, `n` drawn without replacement
    (pick_demos). Their metadata keeps the source collection's seed range, so evaluation still
    refuses every seed it attempted."""
    from tqdm import tqdm

    from opengato.data.episodes import load_episodes, read_collection_meta, write_minari
    from opengato.data.root import DatasetError, data_root
    from opengato.data.scores import load_scores, save_scores
    from opengato.tasks import get_task

    root = data_root(source)
    metas = {t: read_collection_meta(t, root) for t in tasks}
    if missing := [t for t, meta in metas.items() if meta is None]:
        raise DatasetError(
            f"no demonstrations of {', '.join(missing)} under {root}: collect them first "
            f"(`opengato collect --tasks {','.join(missing)}`), or pass the --data-dir they are in"
        )
    seeds = {}
    for name in tqdm(tasks, desc="demos", unit="task", disable=not progress):
        episodes = sorted(load_episodes(name, root), key=lambda e: (e.seed is None, e.seed))
        if len(episodes) < n:
            raise DatasetError(
                f"{name}: {len(episodes)} demonstrations under {root}, fewer than --demos {n}; "
                f"collect more (`opengato collect --tasks {name} --episodes {2 * n}`)"
            )
        episodes = [episodes[i] for i in pick_demos(len(episodes), n, name, draw)]
        meta = {**metas[name], "seeds": [e.seed for e in episodes],
                "returns": [e.episode_return for e in episodes],
                "successes": [e.success for e in episodes],
                "few_shot": {"source": str(root), "demos": n}}  # fmt: skip
        write_minari(get_task(name), episodes, dest, meta)
        seeds[name] = meta["seeds"]
    scores = load_scores(root)
    save_scores(dest, {t: scores[t] for t in tasks if t in scores})
    return seeds


def pick_demos(available: int, n: int, task: str, draw: int | None) -> list[int]:
    """Indices of the `n` demonstrations to use of the `available` (sorted by seed) of `task`:
    the first `n`, or with `draw` a seed, `n` drawn without replacement by a generator seeded
    with (draw, the task's name), in ascending order; the same for the same arguments.

    >>> pick_demos(10, 3, "classic/Pendulum-v1", None)
    [0, 1, 2]
    >>> pick_demos(10, 3, "t", 0) == pick_demos(10, 3, "t", 0) != pick_demos(10, 3, "t", 1)
    True
    """
    import zlib

    import numpy as np

    if draw is None:
        return list(range(n))
    rng = np.random.default_rng([draw, zlib.crc32(task.encode())])
    return sorted(rng.choice(available, size=n, replace=False).tolist())


# --------------------------------------------------------------------------- the run


def plan(cfg: FinetuneConfig) -> tuple[dict, list[str], TrainConfig | None, EvalConfig]:
    """The checkpoint's config, the tasks, and the configs of the training (None in prompt mode)
    and evaluation stages; refuses what cannot run before any work."""
    from opengato.model.checkpoint import read_config
    from opengato.tasks import select

    check_config(cfg)
    ckpt = read_config(cfg.checkpoint)
    tasks = select(cfg.tasks)[0]
    if not tasks:
        raise ValueError(f"--tasks {cfg.tasks!r} names no control task")
    train = train_config(cfg, ckpt, tasks) if cfg.mode == "finetune" else None
    if train is not None and any(Path(train.out_dir).glob("step_*")):
        raise FileExistsError(
            f"{train.out_dir} holds the checkpoints of an earlier run: pass another --out-dir, "
            "or delete it"
        )
    return ckpt, tasks, train, eval_config(cfg, tasks)


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Copy the demonstrations, fine-tune (or not, in prompt mode), evaluate and report; returns
    what `<out-dir>/finetune.json` records."""
    from opengato.agent.evaluate import run_eval
    from opengato.report import ReportConfig, run_report
    from opengato.training.train import run_train

    ckpt, tasks, train, evaluate = plan(cfg)
    pretrained = _pretrained_on(ckpt)
    seen = [t for t in tasks if t in pretrained]
    if seen:
        print(f"WARNING: the checkpoint was pretrained on {', '.join(seen)}: not a held-out "
              "result for those")  # fmt: skip
    twins = {t: near for t in tasks if (near := near_twins(t, pretrained))}
    for task, near in twins.items():
        print(f"WARNING: the checkpoint was pretrained on {', '.join(near)}, near-twins of "
              f"{task} (opengato.tasks.NEAR_TWINS): a result on it measures transfer from a "
              "near copy")  # fmt: skip
    out = Path(cfg.out_dir)
    which = "the first" if cfg.demo_seed is None else f"drawn with seed {cfg.demo_seed}:"
    print(f"=== [1/4] {which} {cfg.demos} demonstrations of {len(tasks)} tasks -> {out / 'demos'}")
    seeds = write_demos(tasks, cfg.demos, cfg.data_dir, out / "demos", cfg.progress,
                        cfg.demo_seed)  # fmt: skip
    trained = None
    if train is not None:
        start = "a random init" if cfg.from_scratch else ckpt["path"]
        print(f"=== [2/4] fine-tune {start} for at most {train.steps} steps, lr {train.lr:g}")
        trained = run_train(train)
        evaluate = replace(evaluate, checkpoint=trained["checkpoint"])
    else:
        print("=== [2/4] prompt mode: no training, the demonstrations are the prompts")
    print(
        f"=== [3/4] evaluate {evaluate.episodes} episodes per task from seed {evaluate.start_seed}"
    )
    results = run_eval(evaluate)
    print("=== [4/4] report")
    title = f"opengato finetune: {_variant(cfg)}, {cfg.demos} demonstrations per task"
    report = run_report(ReportConfig(results=[evaluate.out], out_dir=str(out / "report"),
                                     title=title))  # fmt: skip
    summary = {"variant": _variant(cfg), "config": asdict(cfg), "checkpoint": ckpt["path"],
               "tasks": tasks, "seen_in_pretraining": seen,
               "near_twins_in_pretraining": twins, "demo_seeds": seeds,
               "train_config": asdict(train) if train else None, "train": trained,
               "eval_config": asdict(evaluate), "results": evaluate.out,
               "aggregates": results.get("aggregates"), "report": str(Path(report) / "report.md")}  # fmt: skip
    atomic_write_json(out / "finetune.json", summary)
    print(f"\n{summary['variant']}: results {evaluate.out}, report {summary['report']}")
    return summary


def _pretrained_on(ckpt: dict) -> list[str]:
    """The control tasks the checkpoint was trained on, as far as this registry knows them."""
    from opengato.agent.evaluate import trained_tasks

    try:
        return trained_tasks(ckpt)
    except KeyError:  # a task registered where it was trained, not here
        return []


def _variant(cfg: FinetuneConfig) -> str:
    """A short name of what was run: `finetune`, `from-scratch` or `prompt`, `+ retrieval`."""
    name = "from-scratch" if cfg.from_scratch else cfg.mode
    return name + (" + retrieval" if cfg.retrieval else "")
