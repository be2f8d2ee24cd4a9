"""Evaluation: normalisation, IQM and bootstrap, deterministic seeded runs, resume, errors."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from opengato.checkpoint import save_checkpoint
from opengato.evaluate import (
    EvalConfig,
    aggregate,
    bootstrap_ci,
    iqm,
    normalize_task,
    normalized_score,
    run_eval,
)
from opengato.language import attribute_accuracy, bleu, token_f1
from opengato.model import Gato, make_config
from opengato.tasks import Task, get_task, register_task
from opengato.tokenizer import Tokenizer, TokenizerConfig

torch.set_num_threads(1)
TASKS = ["classic/CartPole-v1", "classic/Pendulum-v1"]


class BrokenEnv(gym.Wrapper):
    """CartPole whose step raises after 3 steps in odd-seeded episodes."""

    def reset(self, *, seed=None, options=None):
        self.t, self.seed_ = 0, seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        if self.t > 3 and self.seed_ % 2:
            raise RuntimeError("simulator exploded")
        return self.env.step(action)


register_task(
    Task(
        name="test/Broken",
        domain="test",
        make_env=lambda seed=None, render_mode=None: BrokenEnv(
            gym.make("CartPole-v1", render_mode=render_mode)
        ),
        make_expert=None,
        max_episode_steps=50,
    ),
    overwrite=True,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tcfg = TokenizerConfig(text_vocab_size=1024)
    tok = Tokenizer(tcfg)
    torch.manual_seed(0)
    mcfg = make_config("gato-tiny", tok.vocab_size, context_len=64, dropout=0.0)
    ckpt = save_checkpoint(root / "run" / "step_1", Gato(mcfg), mcfg, tcfg, {"tasks": TASKS})
    data = root / "data"
    data.mkdir()
    scores = {
        "classic/CartPole-v1": {"expert": 500.0, "random": 20.0},
        "classic/Pendulum-v1": {"expert": -150.0, "random": -1200.0},
    }
    (data / "scores.json").write_text(json.dumps(scores))
    return root, str(ckpt), str(data)


def cfg_for(setup, out: str, **kw) -> EvalConfig:
    root, ckpt, data = setup
    base = dict(
        checkpoint=ckpt, episodes=3, num_envs=2, data_dir=data, out=str(root / out), bootstrap=200
    )
    return EvalConfig(**{**base, **kw})


def strip_times(res: dict) -> dict:
    res = json.loads(json.dumps(res))
    for k in ("started", "finished", "updated"):
        res.pop(k, None)
    for r in res["tasks"].values():
        r.pop("seconds", None)
        r.pop("steps_per_second", None)
    return res


def test_normalisation_arithmetic():
    assert normalized_score(75.0, 50.0, 100.0) == 50.0
    assert normalized_score(-150.0, -1200.0, -150.0) == 100.0
    assert normalized_score(-1200.0, -1200.0, -150.0) == 0.0
    assert normalized_score(5.0, 3.0, 3.0) is None
    r = normalize_task({"metric": "return", "mean_return": 260.0, "success_rate": None},
                       {"classic/CartPole-v1": {"expert": 500.0, "random": 20.0}},
                       get_task("classic/CartPole-v1"))  # fmt: skip
    assert r["normalized_score"] == pytest.approx(50.0)
    r = normalize_task({"metric": "success_rate", "mean_return": 1.0, "success_rate": 0.6},
                       {"metaworld/reach-v3": {"expert_success_rate": 1.0, "random_success_rate": 0.2}},
                       get_task("metaworld/reach-v3"))  # fmt: skip
    assert r["normalized_score"] == pytest.approx(50.0)


def test_iqm_and_bootstrap():
    assert iqm(np.arange(1, 9)) == 4.5  # mean of 3, 4, 5, 6
    assert iqm([1.0, 2.0, 3.0, 100.0]) == 2.5  # the outlier is trimmed
    assert iqm([7.0]) == 7.0
    x = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert bootstrap_ci(np.full(6, 3.0), np.mean) == (3.0, 3.0)  # no spread, no interval
    lo, hi = bootstrap_ci(x, np.mean, 2000, seed=1)
    assert 10.0 <= lo < 30.0 < hi <= 50.0
    assert bootstrap_ci(x, np.mean, 2000, seed=1) == (lo, hi)  # seeded
    rng = np.random.default_rng(0)  # coverage: the 95% CI of the mean of N(0, 1) samples holds 0
    cis = [bootstrap_ci(rng.normal(size=40), np.mean, 300, seed=s) for s in range(60)]
    assert 50 <= sum(lo <= 0.0 <= hi for lo, hi in cis) <= 60
    a = aggregate([0.0, 49.0, 50.0, 80.0, 120.0, None], n_boot=100)
    assert a["n_tasks"] == 5 and a["tasks_ge_50"] == 3 and a["tasks_ge_80"] == 2
    assert a["mean"] == pytest.approx(59.8) and a["median"] == 50.0
    assert a["iqm_ci"][0] <= a["iqm"] <= a["iqm_ci"][1]


def test_caption_metrics():
    assert bleu(["a small red circle at the top left"], ["a small red circle at the top left"]) == {
        "bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0,
    }  # fmt: skip
    b = bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert b["bleu1"] == pytest.approx(5 / 6) and b["bleu2"] == pytest.approx(
        (5 / 6 * 3 / 5) ** 0.5
    )
    assert token_f1("a red ball", "a red ball") == 1.0
    truth = [[{"size": "small", "color": "red", "shape": "circle", "position": "top left"},
              {"size": "large", "color": "blue", "shape": "square", "position": "centre"}]]  # fmt: skip
    acc = attribute_accuracy(
        ["a small green circle at the top left and a large blue square in the centre"], truth
    )
    assert acc["color"] == 0.5 and acc["shape"] == 1.0 and acc["position"] == 1.0
    assert acc["overall"] == 7 / 8 and acc["exact"] == 0.0
    assert attribute_accuracy(["nothing"], truth)["overall"] == 0.0


def test_eval_deterministic_and_complete(setup):
    a = run_eval(cfg_for(setup, "a.json", tasks=TASKS))
    b = run_eval(cfg_for(setup, "b.json", tasks=TASKS))
    sa, sb = strip_times(a), strip_times(b)
    sa["config"].pop("out"), sb["config"].pop("out")
    assert sa == sb
    saved = json.loads(open(cfg_for(setup, "a.json").out).read())
    assert saved["checkpoint"]["sha256"] and len(saved["checkpoint"]["sha256"]) == 64
    for t in TASKS:
        r = saved["tasks"][t]
        assert [e["seed"] for e in r["episodes"]] == [0, 1, 2]
        assert r["normalized_score"] is not None and r["n_errors"] == 0
    assert saved["aggregates"]["overall"]["n_tasks"] == 2
    assert "classic" in saved["aggregates"]["domains"]
    # default tasks come from the checkpoint's training config
    c = run_eval(cfg_for(setup, "c.json", episodes=1))
    assert sorted(c["tasks"]) == sorted(TASKS)


def test_resume_runs_only_missing_tasks(setup, monkeypatch):
    cfg = cfg_for(setup, "resume.json", tasks=TASKS[:1], episodes=2)
    run_eval(cfg)
    import opengato.evaluate as ev

    ran = []
    real = ev.evaluate_task
    monkeypatch.setattr(ev, "evaluate_task", lambda t, *a, **k: ran.append(t) or real(t, *a, **k))
    res = run_eval(cfg_for(setup, "resume.json", tasks=TASKS, episodes=2, resume=True))
    assert ran == [TASKS[1]]
    assert sorted(res["tasks"]) == sorted(TASKS)


def test_env_errors_mark_episodes_failed(setup):
    res = run_eval(cfg_for(setup, "broken.json", tasks=["test/Broken"], episodes=4, record=5))
    r = res["tasks"]["test/Broken"]
    errors = [e for e in r["episodes"] if e["error"]]
    assert len(errors) == 2 and "simulator exploded" in errors[0]["error"]
    assert r["n_errors"] == 2 and r["mean_return"] is not None
    root = setup[0]
    assert (root / r["gif"]).is_file()


def test_baselines(setup):
    res = run_eval(
        cfg_for(setup, "uniform.json", checkpoint="uniform", tasks=TASKS[:1], episodes=2)
    )
    assert res["checkpoint"]["sha256"] is None and res["tasks"][TASKS[0]]["n_episodes"] == 2
    res = run_eval(
        cfg_for(setup, "random.json", checkpoint="random:gato-tiny", tasks=TASKS[:1], episodes=1)
    )
    assert res["tasks"][TASKS[0]]["normalized_score"] is not None


def test_cli_eval_report_caption_chat(setup, tmp_path, capsys, monkeypatch):
    """The real CLI verbs, end to end, for a few steps."""
    from opengato.cli import main

    root, ckpt, data = setup
    out = tmp_path / "cli.json"
    args = ["eval", ckpt, "--tasks", TASKS[0], "--episodes", "2", "--num-envs", "2",
            "--data-dir", data, "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main(args) == 0 and json.loads(out.read_text())["finished"]
    assert main(["report", str(out), "--out-dir", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img.png")
    assert main(["caption", "--checkpoint", ckpt, str(tmp_path / "img.png"),
                 "--max-tokens", "4"]) == 0  # fmt: skip
    assert (
        main(["chat", "--checkpoint", ckpt, "--prompt", "what is a list?", "--max-tokens", "4"])
        == 0
    )
    assert "img.png:" in capsys.readouterr().out


def test_caption_evaluation(setup, monkeypatch):
    import opengato.corpora as corpora
    from opengato.checkpoint import load_model
    from opengato.language import evaluate_captions

    rows = corpora.make_scenes(6, seed=0)
    items = [(np.frombuffer(r["image"], np.uint8).reshape(64, 64, 3), r["caption"],
              json.loads(r["attributes"])) for r in rows]  # fmt: skip
    monkeypatch.setattr(corpora, "load_captions", lambda *a, **k: items)
    model, tok, _ = load_model(setup[1])
    res = evaluate_captions(model, tok, None, limit=3, max_tokens=6)
    assert res["n"] == 3 and 0.0 <= res["attributes"]["overall"] <= 1.0
    assert {"bleu1", "bleu4", "token_f1", "examples"} <= set(res)
