"""The refactor proof: tokens of every built-in task, a mixture batch, a seeded model's loss on
it and a policy's greedy actions are what they were when tests/data/golden.json was recorded
(at commit 389c7b7, before the code was reorganised; see tests/golden.py). Recorded again when
the default text model changed (9d11bd2, trained on training text only): only the fingerprints
that carry text moved (the 90 BabyAI levels' missions, the nested space's Text, the batch and
its losses); every Meta-World, pixel and classic task and the policy's actions stayed."""

import json

import golden
import pytest


@pytest.fixture(scope="module")
def want():
    return json.loads(golden.GOLDEN.read_text())


BUILTIN_SUITES = ("babyai", "metaworld", "metaworld-pixels", "classic")


def test_every_builtin_task_tokenizes_as_recorded(want):
    from opengato.tasks import list_tasks

    # The built-in suites are what was recorded (a test may register tasks of its own).
    builtin = [t for t in list_tasks() if t.split("/")[0] in BUILTIN_SUITES]
    got = golden.fingerprints(builtin)
    assert golden.compare(got, want) == []
    assert set(got["tasks"]) == set(want["tasks"])


def test_compare_reports_a_changed_token(want):
    changed = json.loads(json.dumps(want))
    changed["tasks"]["classic/CartPole-v1"]["ids"] = "0" * 16
    changed["batch"]["train_loss"] += 1e-3
    diffs = golden.compare(changed, want)
    assert len(diffs) == 2 and "CartPole" in diffs[0] and "train_loss" in diffs[1]
