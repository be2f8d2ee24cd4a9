"""`TrainConfig`: the options of `opengato train` (their docstrings are its --help, via tyro).

It lives apart from the loop (training/train.py) so that the modules the loop uses (resume,
validation) can read it without importing the loop.
"""

from dataclasses import dataclass, field
from typing import Literal

from opengato.batches.batch import LossWeights
from opengato.tokens.tokenizer import TokenizerConfig


@dataclass
class TrainConfig:
    """Train a Gato model on a mixture of control tasks, text and image captions."""

    preset: str = "gato-tiny"
    """Model preset (opengato.model.presets.PRESETS): gato-tiny, gato-1m, gato-5m, gato-20m, gato-79m,
    gato-364m, gato-1.18b."""
    tasks: str = "default"
    """Comma-separated datasets: task names, globs (`babyai/*`), suites (`classic`), corpora
    (`text/python-docs`, `text/qa`, `vision/scenes`, `vision/photos`), aliases `text`, `qa`,
    `vision` and `captions`, or `default` (opengato.tasks.DEFAULT_TASKS + text + vision)."""
    data_dir: str | None = None
    """Data root written by `opengato collect`; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    out_dir: str = "runs/gato"
    """Run folder: checkpoints (`step_*`, `latest.txt`), `metrics.jsonl`, TensorBoard `tb/`."""
    shard_dir: str | None = None
    """Where token shards are cached; default `<data_dir>/shards`."""
    tokenize_workers: int = 0
    """Processes that tokenise stale datasets into shards, one dataset each at a time; 0: one
    per usable core (1: in this process)."""
    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this)."""
    batch_size: int = 16
    """Sequences per step, over all processes (each gets batch_size / world_size)."""
    context_len: int = 1024
    """Tokens per sequence L (the paper: 1024). On a CPU the demo trains gato-1m at 512."""
    lr: float = 1e-4
    """Peak learning rate (the paper: 1e-4). Small presets on short runs like 1e-3."""
    warmup_steps: int = 100
    """Linear warm-up from 1e-7 to `lr` (the paper: 15k steps)."""
    min_lr_ratio: float = 0.1
    """Cosine decay from `lr` to `lr * min_lr_ratio` by the last step (the paper: 10x)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    dropout: float = 0.1
    """Dropout of the model (the paper: 0.1)."""
    bin_init: Literal["normal", "smooth"] = "normal"
    """Initial embeddings of the continuous-value bins (GatoConfig.bin_init): `smooth` starts
    neighbouring bins close together; `normal` like every other token."""
    prompt_fraction: float = 0.25
    """Share of control sequences that get a prompt from another episode of the same task."""
    prompt_end_fraction: float = 0.5
    """Share of prompts taken from the end of that episode (the rest: a uniform window)."""
    prompt_len: int | None = None
    """Most tokens a prompt takes from the window (whole timesteps); default context_len // 2;
    below context_len."""
    pack: bool = True
    """Fill the rest of a window whose episode ends early with the starts of other episodes of
    the same dataset, instead of padding (the paper does not say; padding was 22-23% of the
    demo's training tokens, docs/demo-variants.md)."""
    loss_weights: LossWeights = field(default_factory=LossWeights)
    """Weight of each token role as a target (the paper: text data and actions 1, observations
    0), e.g. `observation 0.1` (`--loss-weights.observation 0.1` in `opengato train`,
    `--train.loss-weights.observation 0.1` in `demo` and `suite`)."""
    weights: str = ""
    """Mixture weights, `name=w` with names, globs or domains, e.g. `classic=1,babyai=2,text=0.5`
    (a domain's weight is split among its datasets; a dataset's own name, then a glob, then its
    domain decide its weight). Defaults: each control suite 1, text 0.25, qa 0.1, captions
    0.25. `text` is `text/python-docs`; `text/qa` is the `qa` domain."""
    val_fraction: float = 0.1
    """Share of each task's episodes held out for validation (corpora use their valid split)."""
    early_stop: int = 0
    """Stop when the validation action loss (`val/action_loss`) has not improved for this many
    validations in a row; 0: never. Checkpoints are then saved at each improvement only (the
    baseline at step 0 included), so the run's last checkpoint is its best; without held-out
    episodes it does nothing. A resumed run starts counting afresh."""
    seed: int = 0
    """Seeds the model init, the data (per rank and step) and dropout."""
    eval_every: int = 100
    """Validation every this many steps (and at the end); 0 disables."""
    eval_batches: int = 4
    """Validation batches per dataset."""
    eval_batch_size: int = 0
    """Rows of a validation batch; 0: a training batch's rows (per process). A validation pass
    is a forward over every dataset's batches, so with many datasets it costs many steps."""
    save_every: int = 500
    """Checkpoint every this many steps (and at the end); 0 saves only at the end."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep in out_dir."""
    log_every: int = 10
    """Training metrics every this many steps."""
    resume: bool = False
    """Continue the run in out_dir from its latest checkpoint (same config)."""
    init: str | None = None
    """Start from this checkpoint's weights (fine-tuning); the model shape must match."""
    allow_heldout_tasks: bool = False
    """Train on tasks of the held-out split (opengato.tasks.HELDOUT_TASKS), which pretraining
    leaves out so that few-shot results measure transfer (docs/few-shot.md); without it such a
    run is refused. `opengato finetune` sets it."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype: bf16 runs the model under autocast (weights and optimizer stay fp32)."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    shard: Literal["none", "fsdp"] = "none"
    """How several processes (a torchrun launch) hold the model: `none`, each a full replica
    (DistributedDataParallel); `fsdp`, each 1/N of the parameters, gradients and AdamW state
    (FSDP2, training/sharding.py; for gato-1.18b). Checkpoints are the same files either way."""
    compile: bool = False
    """torch.compile the training forward and backward (the first steps compile, a minute or
    more on a GPU). If compiling or a compiled step fails, the run warns once and goes on eager."""
    compile_scope: Literal["blocks", "model"] = "blocks"
    """With --compile: `blocks` compiles each transformer block, one graph the blocks share
    (compiles once whatever the depth; the embeddings and loss stay eager, and so do validation
    and checkpoints); `model` the whole forward and loss as one graph (compile time grows with
    the depth)."""
    prefetch: int = 2
    """Batches built ahead of the loop in a background thread (pinned memory on a GPU); 0 builds
    each in the loop. The batches are the same either way."""
    progress: bool = True
    """Show a progress bar."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How values become tokens (must match between training and use)."""
    resume_force: bool = False
    """With --resume: continue even though options that change the run (lr, batch size, seed,
    tasks, ...) differ from the checkpoint's; the new values are used from the resumed step on
    and recorded. Without it such a resume is refused, listing each change."""
