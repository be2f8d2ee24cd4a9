"""The ``opengato`` command: one thin function per verb.

Each verb's options are a dataclass that lives beside the code it configures (its field
docstrings become ``--help`` through tyro); this file only dispatches, and turns a verb's
error into one line on stderr (``--debug`` for the traceback). Modules are imported lazily so
that ``opengato --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module, config class, function taking the config, one-line help)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "collect": ("opengato.data.collect", "CollectConfig", "run_collect", "Generate expert demonstrations, text and image-caption data."),
    "train": ("opengato.training.train", "TrainConfig", "run_train", "Train a Gato model on a mixture of datasets."),
    "eval": ("opengato.agent.evaluate", "EvalConfig", "run_eval", "Roll out a checkpoint and compute expert-normalised scores."),
    "report": ("opengato.report", "ReportConfig", "run_report", "Write a Markdown/HTML report with figures from results files."),
    "caption": ("opengato.agent.language", "CaptionConfig", "run_caption", "Caption images with a checkpoint."),
    "chat": ("opengato.agent.language", "ChatConfig", "run_chat", "Chat with a checkpoint (interactive, or one-shot with --prompt)."),
    "demo": ("opengato.demo", "DemoConfig", "run_demo", "Collect, train, evaluate and report on the default tasks, end to end."),
    "suite": ("opengato.demo", "SuiteConfig", "run_demo", "The demo's job on every built-in control task but the held-out ones, plus the corpora, with a recipe for a GPU."),
    "finetune": ("opengato.finetune", "FinetuneConfig", "run_finetune", "Fine-tune (or prompt) a checkpoint with N demonstrations of held-out tasks, then evaluate it."),
    "text-model": ("opengato.tokens.text", "TextModelConfig", "run_text_model", "Train a SentencePiece text model from a corpus file."),
    "serve": ("opengato.serve.app", "ServeConfig", "run_serve", "Serve a local web page: watch a checkpoint play, caption, chat, compare two."),
    "bench": ("opengato.bench", "BenchConfig", "run_bench", "Measure the matmul peak and the speed of training, acting and the data pipeline."),
    "train-expert": ("opengato.experts.train", "TrainExpertConfig", "run_train_expert", "Retrain a MuJoCo, DM Control or MinAtar expert with stable-baselines3 (the `experts` extra) and export it."),
}  # fmt: skip


GLOBAL_OPTIONS = (
    "--import MODULE  import a module of yours that registers tasks first (repeatable, or",
    "                 comma-separated; a path/to/file.py too; also $OPENGATO_IMPORT), e.g.",
    "                 `opengato --import mypkg.tasks collect --tasks mine/*`",
    "--debug          show the traceback of an error",
)


def _usage() -> str:
    lines = [
        "usage: opengato VERB [--help] [options]",
        "       opengato --version",
        "",
        "opengato: an open implementation of DeepMind's Gato generalist agent.",
        "",
        "verbs:",
    ]
    width = max(map(len, VERBS))
    lines += [f"  {verb:<{width}} {spec[3]}" for verb, spec in VERBS.items()]
    lines += ["", "Run `opengato VERB --help` for the options of a verb.", "",
              "Anywhere on the command line, for every verb:",
              *(f"  {line}" for line in GLOBAL_OPTIONS)]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``opengato VERB [options]``; returns the exit code.

    An error inside a verb is printed as one line on stderr (exit code 1) rather than a
    traceback: the messages are written to say what went wrong and what to do. ``--debug``
    anywhere on the command line shows the traceback instead; ``--import MODULE`` anywhere
    imports a module that registers tasks before the verb runs (opengato.plugins). tyro's own
    usage errors and ``--help`` (SystemExit) pass through unchanged."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        imports, argv = _take_imports(argv)
    except ValueError as e:
        print(f"opengato: {e}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, VERBS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"opengato: unknown verb {verb!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        if imports:
            from opengato.plugins import import_modules

            import_modules(imports)
        return _run_verb(verb, rest)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"opengato {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # SystemExit (tyro, --help, explicit exits) is not an Exception
        if debug:
            raise
        print(f"opengato {verb}: {_one_line(e)}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 1


def _take_imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the values of every `--import X` / `--import=X`, the other arguments in order)."""
    imports, rest = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--import":
            value = next(args, None)
            if value is None or value.startswith("-"):
                raise ValueError("--import needs a module name or a .py path after it")
            imports.append(value)
        elif arg.startswith("--import="):
            imports.append(arg.removeprefix("--import="))
        else:
            rest.append(arg)
    return imports, rest


def _run_verb(verb: str, args: list[str]) -> int:
    """Parse ``args`` into the verb's config with tyro and run the verb."""
    import tyro

    module, cls, fn, help_ = VERBS[verb]
    mod = importlib.import_module(module)
    description = "\n".join([help_, "", "Global options:", *GLOBAL_OPTIONS])
    config = tyro.cli(
        getattr(mod, cls), args=args, prog=f"opengato {verb}", description=description
    )
    result = getattr(mod, fn)(config)
    return result if isinstance(result, int) else 0


def _version() -> str:
    """`opengato --version`: the package's version, the checkout's commit when it runs from one,
    and the PyTorch and Python it runs on (what a bug report needs)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from opengato.files import git_commit

    try:
        own = version("opengato")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own = "(not installed)"
    commit = git_commit(short=True)
    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    return (f"opengato {own}{f' (commit {commit})' if commit else ''}, torch {torch.__version__}"
            f"{cuda}, Python {platform.python_version()}")  # fmt: skip


def _one_line(e: BaseException) -> str:
    """``Type: message`` on one line (a KeyError's message without its repr quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    text = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
