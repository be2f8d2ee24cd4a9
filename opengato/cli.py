"""The ``opengato`` command: one thin function per verb.

Each verb's options are a dataclass that lives beside the code it configures (its field
docstrings become ``--help`` through tyro); this file only dispatches. Modules are imported
lazily so that ``opengato --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module, config class, function taking the config, one-line help)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "collect": ("opengato.datasets", "CollectConfig", "run_collect", "Generate expert demonstrations, text and image-caption data."),
    "train": ("opengato.train", "TrainConfig", "run_train", "Train a Gato model on a mixture of datasets."),
    "eval": ("opengato.evaluate", "EvalConfig", "run_eval", "Roll out a checkpoint and compute expert-normalised scores."),
    "report": ("opengato.report", "ReportConfig", "run_report", "Write a Markdown/HTML report with figures from results files."),
    "caption": ("opengato.language", "CaptionConfig", "run_caption", "Caption images with a checkpoint."),
    "chat": ("opengato.language", "ChatConfig", "run_chat", "Chat with a checkpoint (interactive, or one-shot with --prompt)."),
    "demo": ("opengato.demo", "DemoConfig", "run_demo", "Collect, train, evaluate and report on the default tasks, end to end."),
    "text-model": ("opengato.text", "TextModelConfig", "run_text_model", "Train a SentencePiece text model from a corpus file."),
    "bench": ("opengato.bench", "BenchConfig", "run_bench", "Measure tokenizer, training and acting speed."),
}  # fmt: skip


def _usage() -> str:
    lines = [
        "usage: opengato VERB [--help] [options]",
        "",
        "opengato: an open implementation of DeepMind's Gato generalist agent.",
        "",
        "verbs:",
    ]
    lines += [f"  {verb:<11} {spec[3]}" for verb, spec in VERBS.items()]
    lines += ["", "Run `opengato VERB --help` for the options of a verb."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, VERBS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"opengato: unknown verb {verb!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    import tyro

    module, cls, fn, help_ = VERBS[verb]
    mod = importlib.import_module(module)
    config = tyro.cli(getattr(mod, cls), args=rest, prog=f"opengato {verb}", description=help_)
    result = getattr(mod, fn)(config)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
