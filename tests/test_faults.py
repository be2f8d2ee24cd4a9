"""Damaged data on disk and impossible settings fail early and clearly, or repair themselves.

Token shards (opengato/batches/shards.py) are validated on load and rebuilt when damaged; a damaged
Minari dataset is collected again (opengato/data/datasets.py); a timestep longer than the context is
refused before training on nothing.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gymnasium import spaces

from opengato.batches.mixture import Mixture
from opengato.batches.shards import Shard, ShardError, check_fits, ensure_shard
from opengato.batches.sources import build_shards, resolve_sources
from opengato.batches.windows import Split
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.episodes import dataset_id, load_episodes, minari_dir
from opengato.tokens.tokenizer import Tokenizer

TASK = "classic/CartPole-v1"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def control_episodes(tok: Tokenizer, n: int = 4, T: int = 5, obs_dim: int = 4, seed: int = 0):
    """``n`` tokenised episodes of T timesteps: a Box(obs_dim) observation, a Discrete(3) action;
    one timestep is obs_dim + 2 tokens (observation, separator, action)."""
    obs_space, act_space = spaces.Box(-1, 1, (obs_dim,), np.float32), spaces.Discrete(3)
    rng = np.random.default_rng(seed)
    return [
        tok.tokenize_episode(obs_space, act_space,
                             rng.uniform(-1, 1, (T, obs_dim)).astype(np.float32),
                             rng.integers(0, 3, T))
        for _ in range(n)
    ]  # fmt: skip


def build(path, tok, episodes, name="toy/Control", kind="control", log=None, calls=None):
    """ensure_shard over fixed episodes; ``calls`` counts how often they were produced."""

    def produce():
        if calls is not None:
            calls.append(1)
        return episodes, None

    return ensure_shard(path, name=name, domain=name.split("/")[0], source_kind=kind,
                        tokenizer_config=tok.config, source_version="v1", produce=produce,
                        log=log if log is not None else print)  # fmt: skip


# --------------------------------------------------------------------------- shards on load


def test_truncated_array_names_the_file(tmp_path, tok):
    shard, _ = build(tmp_path / "s", tok, control_episodes(tok))
    ids = shard.path / "ids.npy"
    size = ids.stat().st_size
    del shard  # drop the mapping before cutting the file
    with open(ids, "r+b") as f:
        f.truncate(size - 40)
    with pytest.raises(ShardError, match=r"ids\.npy: unreadable .*truncated"):
        Shard(tmp_path / "s")


def test_missing_array_names_the_file(tmp_path, tok):
    shard, _ = build(tmp_path / "s", tok, control_episodes(tok))
    (shard.path / "kind.npy").unlink()
    with pytest.raises(ShardError, match=r"kind\.npy: missing"):
        Shard(shard.path)


def test_lengths_must_agree_with_each_other_and_meta(tmp_path, tok):
    shard, _ = build(tmp_path / "s", tok, control_episodes(tok))
    n = shard.num_tokens
    np.save(shard.path / "target_mask.npy", np.ones(n - 3, bool))  # a valid file, too short
    with pytest.raises(
        ShardError, match=rf"target_mask\.npy: {n - 3} entries, meta.json says num_tokens={n}"
    ):
        Shard(shard.path)
    np.save(shard.path / "target_mask.npy", np.ones(n, bool))
    Shard(shard.path)  # whole again
    meta = json.loads((shard.path / "meta.json").read_text())
    (shard.path / "meta.json").write_text(json.dumps({**meta, "num_timesteps": 999}))
    with pytest.raises(ShardError, match=r"timestep_starts\.npy: gives num_timesteps=\d+ but"):
        Shard(shard.path)


def test_token_ids_outside_the_vocabulary(tmp_path, tok):
    shard, _ = build(tmp_path / "s", tok, control_episodes(tok))
    assert shard.meta["vocab_size"] == tok.vocab_size
    ids = np.load(shard.path / "ids.npy", mmap_mode="r+")
    ids[7] = tok.vocab_size + 5  # would be `index out of range in self` in the embedding
    ids.flush()
    del ids, shard
    with pytest.raises(ShardError, match=rf"ids\.npy: token id {tok.vocab_size + 5} at offset 7"):
        Shard(tmp_path / "s")


def test_damaged_shard_is_rebuilt_with_a_note(tmp_path, tok):
    episodes = control_episodes(tok)
    calls, notes = [], []
    first, rebuilt = build(tmp_path / "s", tok, episodes, log=notes.append, calls=calls)
    assert rebuilt and len(calls) == 1
    original = np.array(first.ids)
    _, rebuilt = build(tmp_path / "s", tok, episodes, log=notes.append, calls=calls)
    assert not rebuilt and len(calls) == 1 and notes == []  # intact: reused silently
    del first
    with open(tmp_path / "s" / "obs_pos.npy", "r+b") as f:
        f.truncate(100)
    shard, rebuilt = build(tmp_path / "s", tok, episodes, log=notes.append, calls=calls)
    assert rebuilt and len(calls) == 2
    assert len(notes) == 1 and "obs_pos.npy" in notes[0] and "toy/Control" in notes[0]
    np.testing.assert_array_equal(shard.ids, original)


def test_shard_of_an_older_format_is_rebuilt(tmp_path, tok):
    episodes, calls = control_episodes(tok), []
    shard, _ = build(tmp_path / "s", tok, episodes, calls=calls)
    meta = json.loads((shard.path / "meta.json").read_text())
    (shard.path / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    _, rebuilt = build(tmp_path / "s", tok, episodes, calls=calls)
    assert rebuilt and len(calls) == 2


# --------------------------------------------------------------------------- collected data


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    run_collect(collect_config(root))
    return root


def collect_config(root) -> CollectConfig:
    return CollectConfig(tasks=TASK, episodes=2, random_episodes=2, data_dir=str(root), workers=1)


def test_build_shards_rebuilds_a_damaged_shard(collected, tmp_path, tok):
    notes: list[str] = []
    [shard] = build_shards(resolve_sources(TASK), tok, collected, tmp_path, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("tokenised")
    ids = shard.path / "ids.npy"
    del shard
    ids.write_bytes(ids.read_bytes()[:-64])
    [shard] = build_shards(resolve_sources(TASK), tok, collected, tmp_path, log=notes.append)
    assert "ids.npy" in notes[1] and "rebuilding" in notes[1] and notes[2].startswith("tokenised")
    assert len(shard.ids) == shard.num_tokens


@pytest.fixture
def data_copy(collected, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(collected, root)
    return root, minari_dir(root) / dataset_id(TASK)


def test_intact_dataset_is_up_to_date(data_copy):
    root, _ = data_copy
    out = run_collect(collect_config(root))
    assert out["tasks"][TASK]["status"] == "up to date"


def test_truncated_dataset_is_collected_again(data_copy, capsys):
    root, path = data_copy
    hdf5 = path / "data" / "main_data.hdf5"
    hdf5.write_bytes(hdf5.read_bytes()[:-200])
    out = run_collect(collect_config(root))
    assert out["tasks"][TASK]["status"] == "collected"
    assert "damaged" in capsys.readouterr().out
    assert len(load_episodes(TASK, root)) == 2


def test_dataset_missing_episodes_is_collected_again(data_copy):
    root, path = data_copy
    meta = json.loads((path / "opengato.json").read_text())
    (path / "opengato.json").write_text(json.dumps({**meta, "seeds": meta["seeds"] + [2]}))
    out = run_collect(collect_config(root))
    assert out["tasks"][TASK]["status"] == "collected"
    assert len(json.loads((path / "opengato.json").read_text())["seeds"]) == 2


# --------------------------------------------------------------------------- context length


def test_timestep_longer_than_the_context_is_refused(tmp_path, tok):
    shard, _ = build(tmp_path / "long", tok, control_episodes(tok, obs_dim=150))
    assert shard.max_timestep_len == 152  # 150 observation tokens, separator, action
    with pytest.raises(
        ValueError, match=r"toy/Control \(152 tokens\).*128 tokens.*--context-len 256"
    ):
        Mixture([shard], 128)
    # Why: every window would start on a timestep and stop before its action.
    mix = Mixture([shard], 256, split=Split("all"), prompt_fraction=0.0)
    windows = mix.sample_windows(np.random.default_rng(0), 16)
    assert all(w.target_mask.sum() > 0 for w in windows)
    # the cut-off a 128 context would make
    assert all(not w.target_mask[:128].any() for w in windows)


def test_long_text_documents_fit_any_context(tmp_path, tok):
    text = build(tmp_path / "t", tok, [tok.tokenize_text("word " * 300)], name="text/x",
                 kind="text")[0]  # fmt: skip
    assert text.max_timestep_len > 64
    check_fits([text], 64)  # packed text windows are cropped, never empty of targets
