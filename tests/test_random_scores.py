"""The shipped random-policy scores (opengato/data/random_scores.py): collection copies a row
instead of running 100 random episodes only when it would measure the same numbers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from opengato.data import random_scores
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.generator import env_hash, random_env_task
from opengato.tasks import get_task, list_tasks

# Cheap random episodes, three domains, one with a success rate.
TASKS = "classic/CartPole-v1,babyai/GoToObj,minatar/Breakout"
FIELDS = random_scores.FIELDS


def _collect(root, **kw):
    cfg = CollectConfig(tasks=TASKS, episodes=2, data_dir=str(root), workers=1, **kw)
    out = run_collect(cfg)
    scores = json.loads((root / "scores.json").read_text())
    return cfg, out, scores


def _how(root, task):
    from opengato.data.episodes import read_collection_meta

    return read_collection_meta(task, root)["random_scores"]


def test_shipped_rows_are_what_collection_measures(tmp_path, monkeypatch):
    """The same collection with the random episodes run and with the shipped rows copied gives
    the same scores.json, row for row; the table's writer puts them back (`--update`: over the
    table's other rows)."""
    _, _, measured = _collect(tmp_path / "measured", measure_random=True)
    _, out, shipped = _collect(tmp_path / "shipped")
    for task in TASKS.split(","):
        assert {k: shipped[task][k] for k in FIELDS} == {k: measured[task][k] for k in FIELDS}
        assert shipped[task]["random_episodes"] == random_scores.EPISODES
        assert _how(tmp_path / "measured", task) == "measured"
        assert _how(tmp_path / "shipped", task) == "shipped"
        assert out["tasks"][task]["random_shipped"]
    # The builder, run on the measured root, gives the shipped rows back.
    built = random_scores.build(tmp_path / "measured")["tasks"]
    assert {t: built[t] for t in TASKS.split(",")} == {
        t: random_scores._table()[t] for t in TASKS.split(",")}  # fmt: skip
    shipped = json.loads(random_scores.TABLE.read_text())
    table = tmp_path / "random_scores.json"
    monkeypatch.setattr(random_scores, "TABLE", table)
    stale = json.loads(json.dumps(shipped))
    stale["tasks"]["classic/CartPole-v1"]["random"] = -1.0
    table.write_text(json.dumps(stale))
    random_scores.main([str(tmp_path / "measured"), "--update"])
    assert json.loads(table.read_text()) == shipped  # the stale row measured again, the rest kept
    random_scores.main([str(tmp_path / "measured")])
    assert json.loads(table.read_text())["tasks"] == {t: built[t] for t in TASKS.split(",")}
    # a wrong argument never empties the table (`--help` was read as an empty data root)
    before = table.read_bytes()
    for argv in (["--help"], [str(tmp_path / "none")], [str(tmp_path / "shipped" / "minari")]):
        with pytest.raises(SystemExit):
            random_scores.main(argv)
    assert table.read_bytes() == before


def test_a_stale_row_or_other_settings_are_measured(tmp_path, monkeypatch, capsys):
    table = {name: dict(row) for name, row in random_scores._table().items()}
    table["classic/CartPole-v1"]["env_hash"] = "0" * 16  # as if its wrapper had changed
    table["classic/CartPole-v1"]["random"] = -1.0
    monkeypatch.setattr(random_scores, "_table", lambda: table)
    cfg, out, scores = _collect(tmp_path / "a")
    assert "1 shipped random scores are stale" in capsys.readouterr().err
    assert _how(tmp_path / "a", "classic/CartPole-v1") == "measured"
    assert scores["classic/CartPole-v1"]["random"] > 0  # CartPole returns are positive
    assert scores["classic/CartPole-v1"]["random_episodes"] == 100
    assert _how(tmp_path / "a", "babyai/GoToObj") == "shipped"
    assert out["tasks"]["classic/CartPole-v1"]["kept"] >= 1
    # Other seeds or counts than the table's: every task is measured.
    run_collect(replace(cfg, random_episodes=7, data_dir=str(tmp_path / "b")))
    scores = json.loads((tmp_path / "b" / "scores.json").read_text())
    assert {scores[t]["random_episodes"] for t in TASKS.split(",")} == {7}


def test_the_table_covers_every_builtin_task_with_an_expert():
    names = {n for n in list_tasks() if get_task(n).make_expert is not None}
    assert names <= set(random_scores._table()), sorted(names - set(random_scores._table()))


@pytest.mark.parametrize("name", ["classic/Pendulum-v1", "babyai/BossLevel", "dmc/cartpole-balance",
                                  "mujoco/Hopper-v5", "minatar/Freeway"])  # fmt: skip
def test_shipped_rows_match_the_current_code(name):
    """A failure here means an env wrapper or package pin changed: regenerate the table (the
    module docstring says how). Every task is checked by the slow test below."""
    assert random_scores._table()[name]["env_hash"] == env_hash(get_task(name))


@pytest.mark.slow
def test_every_shipped_row_matches_the_current_code():
    stale = [n for n, row in random_scores._table().items()
             if row["env_hash"] != env_hash(random_env_task(get_task(n)))]  # fmt: skip
    assert not stale, f"stale rows, regenerate the table: {stale}"
