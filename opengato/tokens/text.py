"""The text side of the tokenizer: SentencePiece models, trained locally.

The built-in default model is trained deterministically, on first use, from text that ships
with Python itself (no download): the training documents of the text corpus, never its held-out
ones (`default_text_corpus`). It is cached under ``$OPENGATO_CACHE`` (default
``~/.cache/opengato``). ``opengato text-model`` trains one from any corpus file.

A text model is identified by the sha256 of its bytes (:func:`text_model_sha256`), never by its
path: the default one is trained on the running Python's docs, so another Python release may
train a different one. Checkpoints carry their own copy (opengato/model/checkpoint.py) and token shards
record the hash (``shards.tokenizer_fingerprint``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from opengato.files import atomic_write_bytes, cache_dir, file_sha256

_TEXT_MODEL_VERSION = "3"  # 2: streamed sentences, no temp paths in it; 3: training documents only


def default_text_corpus() -> str:
    """The training documents of Python's own docs (`opengato.pydocs.documents`: the pydoc
    topics and stdlib module documents that `text/python-docs` trains on), joined. Held-out
    documents are left out, so the pieces a held-out text is cut into were not fitted to it.
    Deterministic for a given Python."""
    from opengato import pydocs

    return "\n".join(d["text"] for d in pydocs.documents() if d["split"] == "train")


def _corpus_lines(corpus: str | Path):
    """The lines of a corpus file (a Path, or a str naming an existing file) or of a str."""
    if isinstance(corpus, Path) or (
        isinstance(corpus, str) and len(corpus) < 4096 and Path(corpus).is_file()
    ):
        with open(corpus, encoding="utf-8", newline="\n") as f:
            for line in f:
                yield line.rstrip("\n")
    else:
        yield from str(corpus).split("\n")


def train_text_model(corpus: str | Path, vocab_size: int, out: str | Path) -> Path:
    """Train a unigram SentencePiece model on a text file (or a str) and write it atomically
    to ``out`` (a ``.model`` path). Identity normalisation and byte fallback, so any string
    round-trips exactly through encode/decode.

    The same corpus gives the same bytes (the sentences are streamed to the trainer and the model
    comes back in memory, so no temp path is recorded in it): a model's sha256 identifies it."""
    import io

    import sentencepiece as spm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus_lines(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    atomic_write_bytes(out, model.getvalue())
    return out


def _load_sp(path: str):
    """The SentencePiece processor of the model file at ``path``, read afresh at each call
    (parsing a model takes milliseconds, and a file rewritten in place is never stale)."""
    import sentencepiece as spm

    data = Path(path).read_bytes()
    try:
        return spm.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # sentencepiece raises a bare OSError/RuntimeError without the path
        raise ValueError(f"cannot load SentencePiece model {path!r}: {e}") from e


def default_text_model_path(vocab_size: int) -> Path:
    """Where the built-in default text model of this vocabulary size is cached."""
    digest = hashlib.sha1(f"{_TEXT_MODEL_VERSION}-{vocab_size}".encode()).hexdigest()[:8]
    return cache_dir() / "text" / f"python-docs-{vocab_size}-{digest}.model"


def text_model_file(text_model: str | None, vocab_size: int) -> Path:
    """The SentencePiece model file a tokenizer config names: ``text_model`` itself, or (None)
    the built-in default of this vocabulary size, trained and cached on first use."""
    if text_model is not None:
        if not Path(text_model).is_file():
            raise FileNotFoundError(f"SentencePiece model {text_model!r} does not exist")
        return Path(text_model)
    path = default_text_model_path(vocab_size)
    if not path.is_file():
        train_text_model(default_text_corpus(), vocab_size, path)
    return path


def text_model_sha256(text_model: str | None, vocab_size: int) -> str:
    """sha256 of the bytes of the text model a tokenizer config names (see text_model_file):
    what identifies the text pieces, wherever the file lives."""
    return file_sha256(text_model_file(text_model, vocab_size))


def load_text_model(text_model: str | None, vocab_size: int):
    """The SentencePiece processor named by the config, training the default one on first use."""
    return _load_sp(str(text_model_file(text_model, vocab_size)))


@dataclass
class TextModelConfig:
    """Train a SentencePiece text model for the tokenizer."""

    out: str
    """Where to write the model (a .model file)."""
    corpus: str | None = None
    """A UTF-8 text file to train on; None uses the built-in corpus (Python's own docs)."""
    vocab_size: int = 4096
    """Number of pieces (the paper: 32,000). Smaller corpora may yield fewer pieces."""


def run_text_model(cfg: TextModelConfig) -> int:
    """`opengato text-model`: train and write a SentencePiece model, then report its size."""
    if cfg.corpus is not None and not Path(cfg.corpus).is_file():
        raise SystemExit(f"opengato text-model: corpus file {cfg.corpus!r} does not exist")
    corpus = Path(cfg.corpus) if cfg.corpus else default_text_corpus()
    out = train_text_model(corpus, cfg.vocab_size, cfg.out)
    n = _load_sp(str(out)).get_piece_size()
    print(
        f"wrote {out} ({n} pieces); use it with TokenizerConfig(text_model={str(out)!r}, text_vocab_size={cfg.vocab_size})"
    )
    return 0
