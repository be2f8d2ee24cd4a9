"""Few-shot learning: the held-out split and its guard, retrieval, early stopping, and
`opengato finetune` end to end in each mode (a gato-tiny checkpoint, 2 tasks, 2 demonstrations)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from opengato.agent.prompts import Prompts, choose_prompt, nearest_start
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.episodes import load_episodes
from opengato.data.root import DatasetError
from opengato.demo import DemoConfig, SuiteConfig, stage_configs
from opengato.finetune import (
    FinetuneConfig,
    FinetuneEvalConfig,
    run_finetune,
    train_config,
    write_demos,
)
from opengato.model.checkpoint import read_config, save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.seeds import EVAL_SEED_START
from opengato.tasks import (
    DEFAULT_TASKS,
    HELDOUT_TASKS,
    HeldOutTaskError,
    check_not_heldout,
    get_task,
    select,
)
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig
from opengato.training.config import TrainConfig
from opengato.training.distributed import Processes
from opengato.training.train import run_train
from opengato.training.validation import EarlyStop

TASKS = ["classic/CartPole-v1", "classic/Pendulum-v1"]  # Pendulum is held out, CartPole not

# --------------------------------------------------------------------------- the split and guard


def test_the_heldout_split_resolves_by_name_and_is_none_of_the_default_tasks():
    held = select("heldout")[0]
    assert held == list(HELDOUT_TASKS) and all(get_task(t) for t in held)
    domains = [get_task(t).domain for t in held]
    assert domains.count("metaworld") >= 5 and domains.count("babyai") >= 3
    assert domains.count("classic") >= 1
    assert all(domains.count(d) == 1 for d in ("mujoco", "dmc", "minatar"))  # one per new domain
    assert not set(held) & set(DEFAULT_TASKS)
    everything_else, corpora = select("all,-heldout")
    assert not set(held) & set(everything_else) and len(corpora) == 4
    assert select("-heldout,classic")[0] == [t for t in select("classic")[0] if t not in held]
    # `opengato eval --tasks` takes a list, whose items may be comma lists: the same grammar
    from opengato.agent.eval_config import EvalConfig
    from opengato.agent.evaluate import eval_tasks

    listed = eval_tasks(EvalConfig(checkpoint="x", tasks=["classic,-heldout", "babyai/GoTo"]), {})
    assert (
        listed == select("classic,-heldout,babyai/GoTo")[0] and "classic/Pendulum-v1" not in listed
    )
    # near-twins pass the name guard: each pattern names a registered task, and the default
    # tasks hold GoToLocal's (finetune warns)
    import fnmatch

    from opengato.tasks import NEAR_TWINS, near_twins

    assert set(NEAR_TWINS) <= set(held)
    for patterns in NEAR_TWINS.values():
        assert all(fnmatch.filter(everything_else, p) for p in patterns), patterns
    assert near_twins("babyai/GoToLocal", list(DEFAULT_TASKS)) == ["babyai/GoToRedBall",
                                                                  "babyai/GoToObj"]  # fmt: skip


def test_pretraining_refuses_heldout_tasks_unless_told(tmp_path, capsys):
    from opengato.cli import main

    with pytest.raises(HeldOutTaskError, match="babyai/GoToLocal, classic/Pendulum-v1"):
        check_not_heldout("classic/CartPole-v1,babyai/GoToLocal,classic/Pendulum-v1")
    check_not_heldout("heldout", allowed=True)
    check_not_heldout("default")
    out = tmp_path / "run"
    with pytest.raises(HeldOutTaskError, match="--allow-heldout-tasks"):
        run_train(TrainConfig(tasks="classic,text", out_dir=str(out), data_dir=str(tmp_path)))
    assert not out.exists()  # refused before any work
    assert main(["train", "--tasks", "all", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "held-out task(s)" in err and "metaworld/door-lock-v3" in err
    # the demo refuses before collecting, and passes the permission on to training
    with pytest.raises(HeldOutTaskError, match="classic/Pendulum-v1"):
        stage_configs(DemoConfig(tasks="default,classic/Pendulum-v1", out_dir=str(out)))
    train = stage_configs(DemoConfig(tasks="default,heldout", allow_heldout_tasks=True))[1]
    assert train.allow_heldout_tasks
    # the default demo is unaffected; the suite leaves the split out, and says so
    assert stage_configs(DemoConfig())[2].tasks == list(DEFAULT_TASKS)
    suite_tasks = stage_configs(SuiteConfig(out_dir=str(out)))[2].tasks
    assert len(suite_tasks) >= 138 and not set(HELDOUT_TASKS) & set(suite_tasks)
    assert "-heldout" in SuiteConfig.tasks.split(",")


# --------------------------------------------------------------------------- retrieval, early stop


def test_retrieval_picks_the_demonstration_nearest_the_start_state():
    box = spaces.Box(-10, 10, (2,))
    starts = [np.array([0.0, 0.0]), np.array([5.0, 5.0]), np.array([1.0, -1.0])]
    assert nearest_start(box, starts, np.array([4.0, 4.5])) == 1
    assert nearest_start(box, starts, np.array([0.9, -0.5])) == 2
    # a Text leaf (a mission) must match where any start has it; then the nearest numbers
    space = spaces.Dict({"mission": spaces.Text(40), "pos": box})
    starts = [{"mission": "go to the ball", "pos": np.array([9.0, 9.0])},
              {"mission": "open the door", "pos": np.array([0.0, 0.0])},
              {"mission": "go to the ball", "pos": np.array([8.0, 8.0])}]  # fmt: skip
    obs = {"mission": "go to the ball", "pos": np.array([0.0, 0.0])}
    assert nearest_start(space, starts, obs) == 2
    assert nearest_start(space, starts, {**obs, "mission": "pick up a key"}) == 1
    seqs = [f"demo {i}" for i in range(3)]  # choose_prompt only indexes them
    prompts = Prompts(seqs, starts)  # type: ignore[arg-type]
    assert choose_prompt(prompts, 7, space, obs, "nearest") == "demo 2"
    drawn = {choose_prompt(prompts, seed, space, obs, "random") for seed in range(20)}
    assert len(drawn) > 1  # random: drawn with the episode's seed
    assert choose_prompt(prompts, 3, space, obs) == choose_prompt(prompts, 3, space, None)
    assert choose_prompt([], 3, space, obs, "nearest") is None


def test_early_stop_keeps_the_best_and_stops_after_patience():
    alone = Processes(world=1, rank=0, device=torch.device("cpu"), own_group=False)
    stop = EarlyStop(patience=2)
    seen = [(stop.update(s, {"val/action_loss": v}, alone).improved, stop.stop)
            for s, v in enumerate([3.0, 2.0, 2.5, 1.5, 1.6, 1.7])]  # fmt: skip
    assert seen == [(True, False), (True, False), (False, False), (True, False), (False, False),
                    (False, True)]  # fmt: skip
    assert stop.best_step == 3 and stop.best == 1.5
    assert EarlyStop(1).update(0, {"val/loss": 2.0}, alone).improved  # no actions: the loss
    assert not EarlyStop(1).update(0, {}, alone).improved


# --------------------------------------------------------------------------- the verb end to end


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A gato-tiny 'pretrained' checkpoint (pretrained on CartPole by its config) and a data
    root with 3 expert demonstrations of each task and their scores."""
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = TokenizerConfig(text_vocab_size=1024)
    torch.manual_seed(0)
    vocab = Tokenizer(tokenizer).vocab_size
    model_config = make_config("gato-tiny", vocab, context_len=64, dropout=0.0)
    recipe = TrainConfig(preset="gato-tiny", tasks=TASKS[0], context_len=64, batch_size=2,
                         lr=1e-3, warmup_steps=2, eval_batches=1, dropout=0.0, log_every=1,
                         tokenizer=tokenizer)  # fmt: skip
    ckpt = save_checkpoint(root / "pre" / "step_1", Gato(model_config), model_config, tokenizer,
                           asdict(recipe))  # fmt: skip
    data = root / "data"
    run_collect(CollectConfig(tasks=",".join(TASKS), episodes=3, random_episodes=2,
                              data_dir=str(data), workers=1))  # fmt: skip
    return str(ckpt), str(data), root


def finetune_cfg(setup, out: str, **kw) -> FinetuneConfig:
    ckpt, data, root = setup
    base = dict(tasks=",".join(TASKS), demos=2, steps=4, data_dir=data,
                out_dir=str(root / out), progress=False,
                eval=FinetuneEvalConfig(episodes=1, num_envs=1, bootstrap=10))  # fmt: skip
    return FinetuneConfig(ckpt, **{**base, **kw})


@pytest.mark.parametrize(
    "variant",
    [{"mode": "finetune"}, {"mode": "prompt", "retrieval": True}, {"from_scratch": True}],
    ids=["finetune", "prompt-retrieval", "from-scratch"],
)
def test_finetune_runs_end_to_end_and_writes_results(setup, variant):
    cfg = finetune_cfg(setup, "-".join(map(str, variant.values())), **variant)
    summary = run_finetune(cfg)
    out = Path(cfg.out_dir)
    assert json.loads((out / "finetune.json").read_text())["variant"] == summary["variant"]
    assert summary["seen_in_pretraining"] == [TASKS[0]]
    assert summary["demo_seeds"] == {t: [0, 1] for t in TASKS}  # the first N
    for t in TASKS:
        assert [e.seed for e in load_episodes(t, out / "demos")] == [0, 1]
    results = json.loads((out / "eval.json").read_text())
    assert set(results["tasks"]) == set(TASKS)
    assert all("error" not in r for r in results["tasks"].values())
    assert results["seeds"]["start_seed"] == EVAL_SEED_START and results["seeds"]["held_out"]
    assert results["config"]["data_dir"] == str(out / "demos")  # prompts from the N only
    assert results["config"]["prompt_choice"] == ("nearest" if cfg.retrieval else "random")
    assert (out / "report" / "report.md").is_file()
    if cfg.mode == "prompt":
        assert summary["train"] is None and results["checkpoint"]["path"] == cfg.checkpoint
        return
    train, trained = summary["train_config"], summary["train"]
    assert train["data_dir"] == str(out / "demos") and train["allow_heldout_tasks"]
    assert train["init"] == (None if cfg.from_scratch else read_config(cfg.checkpoint)["path"])
    assert math.isclose(train["lr"], 1e-3 if cfg.from_scratch else 1e-4)
    best = trained["early_stop"]["best_step"]  # the one checkpoint left is the best one
    assert results["checkpoint"]["path"] == trained["checkpoint"]
    assert Path(trained["checkpoint"]).name == f"step_{best:07d}"
    assert [p.name for p in (out / "train").glob("step_*")] == [f"step_{best:07d}"]


def test_finetune_refuses_what_cannot_run(setup):
    with pytest.raises(ValueError, match="needs --mode finetune"):
        run_finetune(finetune_cfg(setup, "x", mode="prompt", from_scratch=True))
    with pytest.raises(DatasetError, match="fewer than --demos 5"):
        run_finetune(finetune_cfg(setup, "x", demos=5))
    with pytest.raises(DatasetError, match="opengato collect --tasks classic/Acrobot-v1"):
        run_finetune(finetune_cfg(setup, "x", tasks="classic/Acrobot-v1"))


def test_default_steps_scale_with_the_demonstrations(setup):
    ckpt = read_config(setup[0])
    few = train_config(finetune_cfg(setup, "s", steps=None, demos=2), ckpt, TASKS)
    many = train_config(finetune_cfg(setup, "s", steps=None, demos=100), ckpt, TASKS)
    assert (few.steps, many.steps) == (100, 2000)
    assert (
        many.eval_every == 100
        and many.early_stop == 5
        and many.weights == ("classic/CartPole-v1=1,classic/Pendulum-v1=1")
    )
    assert (few.preset, few.context_len, few.batch_size) == ("gato-tiny", 64, 2)  # its recipe


def test_demo_seed_draws_a_reproducible_random_subset(setup):
    _, data, root = setup
    task = TASKS[1]

    def drawn(seed: int | None) -> list[int]:
        out = root / "draw" / str(seed)
        seeds = write_demos([task], 2, data, out, progress=False, draw=seed)[task]
        assert [e.seed for e in load_episodes(task, out)] == seeds  # what was copied
        return seeds

    assert drawn(None) == [0, 1]  # the default: the first N
    subsets = [drawn(seed) for seed in range(6)]
    assert all(len(set(s)) == 2 and set(s) <= {0, 1, 2} for s in subsets)  # without replacement
    assert len({tuple(s) for s in subsets}) > 1  # the seed changes which demonstrations
    assert drawn(3) == subsets[3]  # reproducibly
    summary = run_finetune(finetune_cfg(setup, "drawn", mode="prompt", demo_seed=3))
    assert summary["demo_seeds"][task] == subsets[3]
    assert summary["config"]["demo_seed"] == 3
