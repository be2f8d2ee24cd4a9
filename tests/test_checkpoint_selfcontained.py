"""Checkpoints carry their text model: another machine (another Python, so another default
SentencePiece model, or an empty cache) reads text with the ids the model was trained on."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from gymnasium import spaces
from test_train import config, data_dir  # noqa: F401  (the tiny data root fixture)

from opengato.batches.batch import make_batch
from opengato.batches.shards import ensure_shard, tokenizer_fingerprint
from opengato.model.checkpoint import CheckpointError, load_model, load_tokenizer, save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens import text
from opengato.tokens.seq import TokenSeq
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig
from opengato.training.train import run_train

MISSION = "pick up the purple key behind you, then open the grey door 42"
CHARSET = "abcdefghijklmnopqrstuvwxyz ,0123456789"
OBS_SPACE = spaces.Dict({"direction": spaces.Discrete(4),
                         "mission": spaces.Text(200, charset=CHARSET)})  # fmt: skip
ACTIONS = spaces.Discrete(7)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _another_machine(monkeypatch, tmp_path):
    """An empty text-model cache, and a Python whose docs (the default corpus) differ: the
    default text model trained there is another one."""
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    real = text.default_text_corpus()
    monkeypatch.setenv("OPENGATO_CACHE", str(cache))
    monkeypatch.setattr(text, "default_text_corpus", lambda: real[len(real) // 3 :])
    return cache


def _action_logits(model, tok) -> torch.Tensor:
    """Logits over the action ids after an observation holding the mission."""
    obs = {"direction": np.int64(2), "mission": MISSION}
    seq = TokenSeq.concat([tok.tokenize_observation(OBS_SPACE, obs), tok.separator()])
    lo, hi = tok.action_token_ranges(ACTIONS)[0]
    with torch.no_grad():
        return model.next_logits(make_batch([seq]), vocab=(int(lo), int(hi)))


@pytest.fixture
def saved(tmp_path):
    """A gato-tiny checkpoint saved with the default tokenizer of this machine."""
    tok = Tokenizer()
    cfg = make_config("gato-tiny", tok.vocab_size, context_len=64)
    torch.manual_seed(0)
    model = Gato(cfg).eval()
    path = save_checkpoint(tmp_path / "run" / "step_0000001", model, cfg, tok.config, step=1)
    return path, model, tok


def test_checkpoint_holds_its_text_model(saved):
    path, _, tok = saved
    default = text.default_text_model_path(tok.config.text_vocab_size)
    assert (path / "text.model").read_bytes() == default.read_bytes()
    record = json.loads((path / "config.json").read_text())["text_model"]
    assert record == {"file": "text.model", "sha256": _sha(path / "text.model")}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_moved_checkpoint_reads_text_with_its_own_model(saved, tmp_path, monkeypatch):
    path, model, tok = saved
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(path, moved)
    cache = _another_machine(monkeypatch, tmp_path)

    loaded, tok2, config = load_model(moved)
    assert list(cache.rglob("*")) == []  # nothing was trained or cached to read it
    assert tok2.config == tok.config  # the recorded config, text_model None as saved
    np.testing.assert_array_equal(tok2.encode_text(MISSION), tok.encode_text(MISSION))
    assert tok2.decode_text(tok2.encode_text(MISSION)) == MISSION
    torch.testing.assert_close(
        _action_logits(loaded, tok2), _action_logits(model, tok), rtol=0, atol=0
    )
    # The premise: this machine's own default text model gives other ids for the same text.
    here = Tokenizer()
    assert not np.array_equal(here.encode_text(MISSION), tok.encode_text(MISSION))


def test_tampered_or_missing_text_model_is_refused(saved, tmp_path, monkeypatch):
    path, _, tok = saved
    other = text.train_text_model(text.default_text_corpus()[:100_000], 1024, tmp_path / "o.model")
    moved = tmp_path / "moved"
    shutil.copytree(path, moved)
    shutil.copy(other, moved / "text.model")  # a valid SentencePiece model, but not its own
    with pytest.raises(CheckpointError, match="not the text model this checkpoint was saved"):
        load_model(moved)
    with pytest.raises(CheckpointError, match="not the text model"):
        load_tokenizer(moved)
    data = bytearray((path / "text.model").read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    (moved / "text.model").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed or damaged"):
        load_model(moved)

    # Missing: fine only where this machine's text model is the very same one (checked by hash).
    (moved / "text.model").unlink()
    _, tok2, _ = load_model(moved)
    np.testing.assert_array_equal(tok2.encode_text(MISSION), tok.encode_text(MISSION))
    _another_machine(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError, match="has no text.model .* not the same one"):
        load_model(moved)


def test_custom_text_model_travels_too(tmp_path):
    custom = text.train_text_model(text.default_text_corpus()[:100_000], 1024, tmp_path / "c.model")
    tok = Tokenizer(TokenizerConfig(text_model=str(custom), text_vocab_size=1024))
    cfg = make_config("gato-tiny", tok.vocab_size)
    path = save_checkpoint(tmp_path / "step_1", Gato(cfg), cfg, tok.config, step=1)
    ids = tok.encode_text(MISSION)
    custom.unlink()  # the file the config names is gone: the checkpoint has its own copy
    _, tok2, _ = load_model(path)
    np.testing.assert_array_equal(tok2.encode_text(MISSION), ids)
    assert tok2.config.text_model == str(custom)  # the recorded config, as saved


def test_fingerprint_covers_the_default_text_model(tmp_path, monkeypatch):
    """Shards record the text model's hash (inside the fingerprint), the default one's too, and
    are rebuilt when it changes; moving a custom model's file does not rebuild them."""
    monkeypatch.setenv("OPENGATO_CACHE", str(tmp_path / "cache"))
    cfg = TokenizerConfig(text_vocab_size=1024)
    default = text.default_text_model_path(1024)
    corpus = text.default_text_corpus()[:100_000]
    text.train_text_model(corpus, 1024, default)
    built = []

    def produce():
        built.append(1)
        return [Tokenizer(cfg).tokenize_text(MISSION)], None

    def ensure():
        return ensure_shard(tmp_path / "shard", name="text/x", domain="text", source_kind="text",
                            tokenizer_config=cfg, source_version="1", produce=produce,
                            log=lambda *a: None)[1]  # fmt: skip

    before = tokenizer_fingerprint(cfg)
    assert ensure() and not ensure()
    text.train_text_model(corpus.upper(), 1024, default)  # another Python's docs, same path
    assert tokenizer_fingerprint(cfg) != before
    assert ensure() and len(built) == 2

    moved = tmp_path / "moved.model"
    shutil.copy(default, moved)
    assert tokenizer_fingerprint(TokenizerConfig(text_model=str(moved), text_vocab_size=1024)) == (
        tokenizer_fingerprint(cfg)
    )


def test_default_text_model_training_is_byte_identical(tmp_path):
    corpus = text.default_text_corpus()[:100_000]
    a = text.train_text_model(corpus, 1024, tmp_path / "a" / "m.model")
    b = text.train_text_model(corpus, 1024, tmp_path / "b" / "m.model")
    assert a.read_bytes() == b.read_bytes()  # no temp paths recorded: the hash names the model


def test_init_refuses_another_text_model(data_dir, tmp_path, monkeypatch):  # noqa: F811
    first = run_train(config(data_dir, tmp_path / "a", steps=1, eval_every=0))
    ck = first["checkpoint"]
    own = tmp_path / "kept.model"
    shutil.copy(f"{ck}/text.model", own)
    _another_machine(monkeypatch, tmp_path)
    shards = str(tmp_path / "shards")
    with pytest.raises(CheckpointError, match="another text model.*--tokenizer.text-model"):
        run_train(config(data_dir, tmp_path / "b", steps=2, eval_every=0, init=ck,
                         shard_dir=shards))  # fmt: skip
    assert not (tmp_path / "b" / "train_config.json").exists()
    # The remedy the message names: the checkpoint's own text model, wherever its file is.
    ft = run_train(config(data_dir, tmp_path / "c", steps=2, eval_every=0, init=ck,
                          shard_dir=shards, tokenizer=TokenizerConfig(text_model=str(own))))  # fmt: skip
    assert (tmp_path / "c" / "step_0000002" / "text.model").read_bytes() == own.read_bytes()
    assert ft["start_step"] == 0
