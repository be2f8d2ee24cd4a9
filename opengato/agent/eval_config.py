"""`EvalConfig`: the options of `opengato eval` (their docstrings are its --help, via tyro).

It lives apart from the verb (agent/evaluate.py) so that the rollouts it configures
(agent/rollout.py) can read it without importing the verb.
"""

from dataclasses import dataclass, field
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from opengato.seeds import EVAL_SEED_START


@dataclass
class EvalConfig:
    """Roll out a checkpoint and compute expert-normalised scores."""

    checkpoint: Positional[Annotated[str, arg(metavar="CHECKPOINT")]]
    """Checkpoint folder or run folder; `random:<preset>` for a random-init model of a preset;
    `uniform` for uniformly random actions."""
    tasks: list[str] = field(default_factory=list)
    """Task names, globs or suites (`classic/CartPole-v1`, `babyai/*`, `metaworld`); empty: the
    tasks the checkpoint was trained on (its config.json), or the default demo tasks."""
    episodes: int = 50
    """Rollouts per task (the paper: 50); 0: none, only the language scores (`--captions`,
    `--qa`)."""
    start_seed: int = EVAL_SEED_START
    """Episode i resets its env with seed start_seed + i (default 1000000: held-out start
    states; demonstrations use seeds from 0); also seeds sampling and the choice of prompts."""
    allow_seen_seeds: bool = False
    """Evaluate even on seeds that a task's demonstrations used (the score then measures recall
    of seen start states, not a policy; the results file says so)."""
    num_envs: int = 8
    """Envs stepped in lock-step per task, batched through one forward pass."""
    workers: int = 1
    """Processes evaluating different tasks in parallel (each loads the model). For one model
    on a GPU acting for many envs, use `env_workers` instead."""
    env_workers: int = 0
    """Processes that step the envs while this process's one model acts for them (e.g. the
    machine's cores); 0: the envs are stepped here. Results are the same either way."""
    concurrent_tasks: int = 1
    """Tasks this process evaluates at once, every batch of `num_envs` envs of each in flight
    together with a policy of its own, so one batch's forward passes run while others' envs
    step (in `env_workers`). Tasks start longest first (by step limit), and a task's place goes
    to the next as soon as its own episodes end. Results are the same as one task at a time."""
    group_tasks: int = 1
    """Up to this many of the concurrent tasks, of one domain and with envs of the same spaces
    (the Meta-World state tasks, the BabyAI levels), play their batch b as one batch through one
    policy: one forward pass a step for all of them instead of one per task. It changes which
    envs share a forward pass, so actions can differ from those of 1 by floating-point rounding
    (none did in our CPU tests; a GPU's kernels depend more on the batch's shape)."""
    mix_spaces: bool = False
    """With `group_tasks`, a group need not share a domain or spaces: its tasks' batch b plays
    as one batch through one policy for envs of several spaces (each env's observation tokenised
    by its own space, each sampling its own action tokens), so a step takes as many forward
    passes as its longest action, not one per action token of each task. For the tasks that
    share no spaces with others (classic control, MuJoCo, DM Control, MinAtar: one lane of 20
    envs each otherwise, up to 8 forwards a step for 1,000 steps). Actions equal a policy per
    space's to floating-point rounding (tests/test_policy.py). `uniform` has no forwards to
    share: its tasks play apart."""
    max_minutes: float | None = None
    """Wall-clock minutes for the control tasks' episodes (None: no limit). Once they are up,
    no task starts, and with `env_workers` or `concurrent_tasks` the tasks still playing stop
    (task after task, and with `workers`, a task that has started finishes). The tasks left are
    named in the results (`unfinished`) and a warning, and left out of the scores; `--resume`
    evaluates them. Captions and answers are scored after it all the same. `opengato demo` and
    `suite` with `--budget-minutes` set it to what the budget leaves."""
    sample: Literal["greedy", "temperature"] = "greedy"
    """How action tokens are chosen: `greedy` (the most likely legal token; an episode's actions
    do not depend on how episodes are batched) or `temperature` (sampled; the envs of a batch
    draw from one generator seeded by --start-seed, so the draws depend on the batching too)."""
    temperature: float = 1.0
    """Sampling temperature when sample is `temperature`."""
    prompt: bool = True
    """Prepend a successful demonstration of the task (from data_dir) to each episode."""
    prompt_tokens: int | None = None
    """Most tokens of a prompt (whole timesteps). None: the training run's prompt length
    (`--prompt-len`, default half the context), so acting sees prompts like training did."""
    prompt_choice: Literal["random", "nearest"] = "random"
    """Which demonstration prompts an episode: `random` (drawn with the episode's seed) or
    `nearest` (retrieval: the one whose first observation is closest to the episode's reset
    observation: the same Text leaves, e.g. BabyAI's mission, where any has them, then the least
    L2 distance over all the numbers; agent/rollout.py `nearest_start`)."""
    prompt_from: Literal["end", "start"] = "end"
    """Which part of the demonstration the prompt is: its last timesteps (`end`: goal
    conditioning, as half of the training prompts) or its first (`start`: the paper's
    deployment reading)."""
    overflow: Literal["slide", "reprefill"] = "slide"
    """When the window is full: `slide` crops the KV cache (fast), `reprefill` recomputes the
    last context_len tokens from scratch (exactly what a fresh forward would attend to)."""
    slide_slack: int = 0
    """With `slide`: drop this many extra tokens per crop (the window then holds between
    context_len - slide_slack and context_len tokens). No faster since the KV cache became a ring
    buffer whose crops move nothing; kept so that older runs can be repeated."""
    weights: Literal["packed", "plain", "int8", "compiled", "auto"] = "packed"
    """How a CPU runs the transformer: `packed` (weights laid out once for oneDNN: the same
    results up to rounding, ~2x faster at batch 1), `plain` (PyTorch's own layout, every call),
    `int8` (opt-in, not the paper: int8 weights per output channel with activations quantised on
    the fly; its accuracy cost is measured in benchmarks/RESULTS.md, and results made with it
    carry a warning), or `compiled` (each decoding forward one torch.compile graph over packed
    weights: for bf16 models the fastest at batch 1 once each shape has compiled, ~10 s a shape
    for gato-79m; fp32 models run slower than packed; results equal to rounding, not bit for
    bit). On a GPU: plain, or `compiled` (each decoding forward a CUDA graph, ragged lanes' too,
    recorded once a shape's eager forwards on its KV cache have taken as long as a recording;
    measured at batch 1 and 512 on an H100, not yet in an evaluation); int8 is refused. `auto`:
    `compiled` on a GPU, `packed` on a CPU (what `opengato suite` uses: its evaluation's ~17,000
    forward passes meet their shape again 94% of the time, benchmarks/RESULTS.md). With
    `compiled`, the results say what recording cost (`decoding`)."""
    data_dir: str | None = None
    """Data root with scores.json (normalisation) and the demonstrations (prompts); None: the
    default data root ($OPENGATO_DATA)."""
    out: str = "results/eval.json"
    """Results JSON path; rollout GIFs go to a `rollouts/` folder beside it."""
    resume: bool = False
    """Keep the finished tasks of an existing results file and run only the others."""
    record: int = 0
    """Save a GIF of each task's first episode, up to this many frames (0: none)."""
    captions: bool = False
    """Also caption the held-out scenes (`vision/scenes`, test split) and score the captions."""
    caption_limit: int = 200
    """Distinct held-out pictures captioned when `captions` is set."""
    qa: bool = False
    """Also answer the held-out questions (`text/qa`, valid split) and score the answers (token
    F1, BLEU) and the references' likelihood under the model (nats per token)."""
    qa_limit: int = 500
    """Most held-out questions answered when `qa` is set (the corpus built under Python 3.11
    holds 128; a gato-1m answers them in a few seconds on 2 CPU cores)."""
    device: str = "cpu"
    """Torch device for the model."""
    threads: int = 0
    """Torch CPU threads per process (0: torch's default; workers > 1 use 1 each). One thread is
    often fastest for small models on a busy machine."""
    bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence intervals of the aggregates."""
