"""Evaluation: normalisation, IQM and bootstrap, deterministic seeded runs, resume, errors.
Captions and answers: tests/test_language.py."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from opengato.agent.eval_config import EvalConfig
from opengato.agent.evaluate import format_results, run_eval
from opengato.agent.prompts import load_prompts, prompt_length
from opengato.agent.scores import (
    aggregate,
    aggregate_results,
    bootstrap_ci,
    iqm,
    normalize_task,
    normalized_score,
)
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.episodes import load_episodes
from opengato.model.checkpoint import save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.seeds import EVAL_SEED_START, SeenSeedsError
from opengato.tasks import Task, get_task, register_task
from opengato.tokens.spaces import head
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig

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


@pytest.fixture
def broken_task() -> str:
    """test/Broken, registered for one test (tests/conftest.py puts the registry back)."""
    return register_task(
        Task(
            name="test/Broken",
            domain="test",
            make_env=lambda seed=None, render_mode=None: BrokenEnv(
                gym.make("CartPole-v1", render_mode=render_mode)
            ),
            make_expert=None,
            max_episode_steps=50,
        )
    ).name


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tcfg = TokenizerConfig(text_vocab_size=1024)
    tok = Tokenizer(tcfg)
    torch.manual_seed(0)
    mcfg = make_config("gato-tiny", tok.vocab_size, context_len=64, dropout=0.0)
    model = Gato(mcfg)
    with torch.no_grad():  # large weights: actions that depend on the observation
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    ckpt = save_checkpoint(root / "run" / "step_1", model, mcfg, tcfg, {"tasks": TASKS})
    data = root / "data"
    # real (tiny) demonstrations: prompts and the seeds they used come from them
    run_collect(CollectConfig(tasks=",".join(TASKS), episodes=2, random_episodes=2,
                              data_dir=str(data), workers=1))  # fmt: skip
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
    assert normalized_score(0.0, 10.0, 5.0) is None  # an expert below random: no scale
    r = normalize_task({"metric": "return", "mean_return": 260.0, "success_rate": None},
                       {"classic/CartPole-v1": {"expert": 500.0, "random": 20.0}},
                       get_task("classic/CartPole-v1"))  # fmt: skip
    assert r["normalized_score"] == pytest.approx(50.0)
    r = normalize_task({"metric": "success_rate", "mean_return": 1.0, "success_rate": 0.6},
                       {"metaworld/reach-v3": {"expert_success_rate": 1.0, "random_success_rate": 0.2}},
                       get_task("metaworld/reach-v3"))  # fmt: skip
    assert r["normalized_score"] == pytest.approx(50.0)


def test_failed_episodes_and_unscored_tasks_are_counted():
    """A failed episode is no success (as in the expert's rate); a task whose every episode
    failed, or that has no normalised score, is unscored: below every threshold, not absent."""
    from opengato.agent.rollout import task_result
    from opengato.agent.scores import unscored_by_domain

    def ep(success, error=None):
        return {"seed": 0, "return": 1.0, "length": 5, "success": success, "error": error}

    reach, cart = get_task("metaworld/reach-v3"), get_task("classic/CartPole-v1")
    r = task_result(reach, [ep(True), ep(None, "boom"), ep(None, "boom"), ep(None, "boom")], 0, 1)
    assert r["success_rate"] == 0.25 and r["n_errors"] == 3 and "error" not in r
    dead = task_result(cart, [ep(None, "boom"), ep(None, "boom")], 0, 1.0)
    assert dead["error"].startswith("every episode failed: boom") and dead["mean_return"] is None
    results = {"tasks": {
        "classic/CartPole-v1": {**dead, "normalized_score": None},
        "classic/Acrobot-v1": {"domain": "classic", "normalized_score": None},  # no references
        "classic/Pendulum-v1": {"domain": "classic", "normalized_score": 70.0},
    }}  # fmt: skip
    assert unscored_by_domain(results) == {"classic": 2}
    # an episode that ended in an error counts no more than random: 49 crashes and one 500
    crashed = task_result(cart, [{**ep(None), "return": 500.0}] + [ep(None, "nan")] * 49, 0, 1)
    assert crashed["mean_return"] == 500.0  # the episodes that went through
    r = normalize_task(crashed, {"classic/CartPole-v1": {"expert": 500.0, "random": 20.0}}, cart)
    assert r["score"] == pytest.approx((500.0 + 49 * 1.0) / 50) and r["normalized_score"] < 0


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
    # the tasks kept, their episodes resampled: tasks whose episodes agree leave no interval
    tasks = {f"t{i}": {"domain": "d", "metric": "success_rate", "random": 0.0, "expert": 1.0,
                       "normalized_score": 100.0 * s,
                       "episodes": [{"success": j < 10 * s, "error": None} for j in range(10)]}
             for i, s in enumerate([0.0, 0.5, 1.0, 1.0])}  # fmt: skip
    agg = aggregate_results(tasks, n_boot=200)["overall"]
    assert agg["mean"] == 62.5 and agg["mean_ci"][1] - agg["mean_ci"][0] > 30
    assert agg["mean_ci_episodes"][0] < 62.5 < agg["mean_ci_episodes"][1]  # the 0.5 task varies
    assert agg["mean_ci_episodes"][1] - agg["mean_ci_episodes"][0] < 20
    tasks["t1"]["episodes"] = [{"success": True, "error": None}] * 10  # every task uniform
    tasks["t1"]["normalized_score"] = 100.0
    assert aggregate_results(tasks, n_boot=200)["overall"]["mean_ci_episodes"] == [75.0, 75.0]


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
        assert [e["seed"] for e in r["episodes"]] == [EVAL_SEED_START + i for i in range(3)]
        assert r["prompts_available"] >= 1
        assert r["normalized_score"] is not None and r["n_errors"] == 0
    assert saved["aggregates"]["overall"]["n_tasks"] == 2
    assert "classic" in saved["aggregates"]["domains"]
    # the model acts on what it sees: some episode is neither always-left nor always-right
    # (a constant policy would make the tests comparing evaluation paths see little)
    constant = [[_constant_length(a, e["seed"]) for a in (0, 1)]
                for e in saved["tasks"][TASKS[0]]["episodes"]]  # fmt: skip
    lengths = [e["length"] for e in saved["tasks"][TASKS[0]]["episodes"]]
    assert any(n not in c for n, c in zip(lengths, constant, strict=True)), (lengths, constant)
    # default tasks come from the checkpoint's training config
    c = run_eval(cfg_for(setup, "c.json", episodes=1))
    assert sorted(c["tasks"]) == sorted(TASKS)


def _constant_length(action: int, seed: int) -> int:
    """The length of a CartPole episode that always pushes the same way."""
    env = gym.make("CartPole-v1")
    env.reset(seed=seed)
    for t in range(1, 501):
        if any(env.step(action)[2:4]):
            return t
    return 500


def test_resume_runs_only_missing_tasks(setup, monkeypatch):
    cfg = cfg_for(setup, "resume.json", tasks=TASKS[:1], episodes=2)
    run_eval(cfg)
    import opengato.agent.evaluate as ev

    ran = []
    real = ev.evaluate_task
    monkeypatch.setattr(ev, "evaluate_task", lambda t, *a, **k: ran.append(t) or real(t, *a, **k))
    res = run_eval(cfg_for(setup, "resume.json", tasks=TASKS, episodes=2, resume=True))
    assert ran == [TASKS[1]]
    assert sorted(res["tasks"]) == sorted(TASKS)


def test_env_errors_mark_episodes_failed(setup, broken_task):
    res = run_eval(cfg_for(setup, "broken.json", tasks=[broken_task], episodes=4, record=5,
                           prompt=False))  # fmt: skip
    r = res["tasks"][broken_task]
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

    from opengato.agent.language import answer, caption_image, prepare_image
    from opengato.model.checkpoint import load_model

    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    capsys.readouterr()
    assert main(["caption", "--checkpoint", ckpt, str(tmp_path / "img.png"),
                 "--max-tokens", "4"]) == 0  # fmt: skip
    model, tok, _ = load_model(ckpt)
    caption = caption_image(model, tok, prepare_image(image), max_tokens=4)
    assert capsys.readouterr().out == f"{tmp_path / 'img.png'}: {caption}\n" and caption
    assert (
        main(["chat", "--checkpoint", ckpt, "--prompt", "what is a list?", "--max-tokens", "4"])
        == 0
    )
    said = answer(model, tok, "what is a list?", max_tokens=4)
    assert capsys.readouterr().out == f"{said}\n" and said


class NaNEnv(gym.Wrapper):
    """CartPole whose observation turns NaN after 2 steps in episodes with an even seed."""

    def reset(self, *, seed=None, options=None):
        self.t, self.seed_ = 0, seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.t += 1
        if self.t > 2 and self.seed_ % 2 == 0:
            obs = np.full_like(obs, np.nan)
        return obs, r, term, trunc, info


def test_non_finite_observation_loses_one_episode_not_the_task(setup):
    register_task(Task(name="test/NaN", domain="test",
                       make_env=lambda seed=None, render_mode=None: NaNEnv(gym.make("CartPole-v1")),
                       make_expert=None, max_episode_steps=30))  # fmt: skip
    res = run_eval(cfg_for(setup, "nan.json", tasks=["test/NaN"], episodes=4, prompt=False))
    r = res["tasks"]["test/NaN"]
    errors = [e for e in r["episodes"] if e["error"]]
    assert len(errors) == 2 and all("non-finite observation" in e["error"] for e in errors)
    assert r["n_errors"] == 2 and r["mean_return"] is not None
    assert "2/4" in format_results(res)


def test_evaluation_seeds_never_meet_collection_seeds(setup):
    """The default streams are disjoint, and evaluating on seen seeds is refused."""
    from opengato.data.episodes import read_collection_meta
    from opengato.demo import DemoConfig
    from opengato.seeds import RANDOM_SEED_START, training_seeds

    collect, ev = CollectConfig(), EvalConfig(checkpoint="x")
    assert collect.seed + collect.episodes <= RANDOM_SEED_START < ev.start_seed == EVAL_SEED_START
    assert DemoConfig().collect.episodes < RANDOM_SEED_START
    with pytest.raises(ValueError, match="evaluation"):
        run_collect(CollectConfig(tasks=TASKS[0], seed=RANDOM_SEED_START - 1, episodes=2,
                                  data_dir=setup[2]))  # fmt: skip
    used = training_seeds(read_collection_meta(TASKS[0], setup[2]))
    assert used == {0, 1}
    with pytest.raises(SeenSeedsError, match="replay training start states"):
        run_eval(cfg_for(setup, "seen.json", tasks=TASKS, start_seed=1, episodes=2))
    res = run_eval(cfg_for(setup, "seen.json", tasks=TASKS[:1], start_seed=1, episodes=2,
                           allow_seen_seeds=True))  # fmt: skip
    assert res["seeds"]["held_out"] is False
    assert any("SEEN SEEDS" in w for w in res["warnings"])
    # and the start states themselves: seed 1's episode began where a demonstration did
    seen = {e["seed"]: e["seen_start"] for e in res["tasks"][TASKS[0]]["episodes"]}
    assert seen == {1: True, 2: False} and res["tasks"][TASKS[0]]["seen_starts"] == 1
    assert any(w.startswith("START STATES SEEN") and f"{TASKS[0]} 1/2" in w
               for w in res["warnings"])  # fmt: skip
    fresh = run_eval(cfg_for(setup, "fresh.json", tasks=TASKS[:1], episodes=2))
    assert fresh["seeds"]["held_out"] is True and fresh["tasks"][TASKS[0]]["seen_starts"] == 0
    assert not any(w.startswith("START STATES SEEN") for w in fresh["warnings"])
    from opengato.agent.evaluate import check_seeds, new_results

    unchecked = check_seeds([TASKS[0]], cfg_for(setup, "u.json"), [str(setup[0] / "no-data")])
    assert "could not be checked" in unchecked[0]
    # not claimed when it could not be checked
    assert new_results(cfg_for(setup, "u.json"), {}, unchecked)["seeds"]["held_out"] is None
    eval_seeds = {e["seed"] for e in fresh["tasks"][TASKS[0]]["episodes"]}
    assert not eval_seeds & used


def test_no_silent_fallbacks(setup, tmp_path):
    from opengato.data.root import DatasetError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no demonstrations to prompt with"):
        run_eval(cfg_for(setup, "np.json", tasks=TASKS[:1], episodes=1, data_dir=str(empty)))
    res = run_eval(cfg_for(setup, "ns.json", tasks=TASKS[:1], episodes=1, data_dir=str(empty),
                           prompt=False))  # fmt: skip
    assert any("no scores table" in w for w in res["warnings"])
    assert res["tasks"][TASKS[0]]["normalized_score"] is None
    few = run_eval(cfg_for(setup, "few.json", tasks=TASKS[:1], episodes=1))
    assert any("rests on 0 episodes" in w for w in few["warnings"])  # the table has no counts
    assert not any("STALE REFERENCES" in w for w in few["warnings"])  # collected by this code


def test_references_from_other_code_are_named(setup, tmp_path):
    """Data collected by another env version (here: its recorded generator hash edited) gives
    reference scores the installed env may not match: evaluation says so, task by task."""
    import shutil

    from opengato.data.episodes import dataset_id, minari_dir

    data = tmp_path / "data"
    shutil.copytree(setup[2], data)
    meta_path = minari_dir(data) / dataset_id(TASKS[1]) / "opengato.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "generator_hash": "0" * 16}))
    res = run_eval(cfg_for(setup, "stale.json", tasks=TASKS, episodes=1, data_dir=str(data)))
    stale = [w for w in res["warnings"] if w.startswith("STALE REFERENCES")]
    assert len(stale) == 1 and stale[0].endswith(f"collect them again: {TASKS[1]}")


def test_resume_refuses_a_changed_protocol(setup):
    run_eval(cfg_for(setup, "rp.json", tasks=TASKS[:1], episodes=1))
    with pytest.raises(ValueError, match="episodes: 1 -> 2"):
        run_eval(cfg_for(setup, "rp.json", tasks=TASKS, episodes=2, resume=True))
    with pytest.raises(ValueError, match="prompt_from"):
        run_eval(cfg_for(setup, "rp.json", tasks=TASKS, episodes=1, resume=True,
                         prompt_from="start"))  # fmt: skip


def test_prompts_follow_training_length_and_source(setup):
    task = get_task(TASKS[1])
    env = task.make_env()
    tok = Tokenizer(TokenizerConfig(text_vocab_size=1024))
    cfg = cfg_for(setup, "x.json")
    assert prompt_length(cfg, {"train": {"context_len": 64}}, 64) == 32
    assert prompt_length(cfg, {"train": {"context_len": 64, "prompt_len": 20}}, 64) == 20
    # a run trained without prompts acts without them (0 was read as unset: half the context)
    assert prompt_length(cfg, {"train": {"context_len": 64, "prompt_len": 0}}, 64) == 0
    assert prompt_length(cfg, {"train": {"context_len": 64, "prompt_fraction": 0.0}}, 64) == 0
    spaces = (env.observation_space, env.action_space)
    end = load_prompts(task, tok, *spaces, setup[2], 32, "end")
    start = load_prompts(task, tok, *spaces, setup[2], 32, "start")
    assert len(end) == len(start) >= 1
    full = [tok.tokenize_episode(env.observation_space, env.action_space,
                                 head(env.observation_space, e.observations, len(e)), e.actions)
            for e in load_episodes(task.name, setup[2])]  # fmt: skip
    step = len(full[0]) // len(full[0].timestep_starts)  # Pendulum: fixed tokens per timestep
    for e, s in zip(end, start, strict=True):  # each is the end / the start of a demonstration
        assert len(e) == len(s) == (32 // step) * step
        assert any(np.array_equal(e.ids, f.ids[len(f) - len(e) :]) for f in full)
        assert any(np.array_equal(s.ids, f.ids[: len(s)]) for f in full)
        assert not any(np.array_equal(e.ids, f.ids[: len(e)]) for f in full)


def test_unwritable_out_fails_before_any_rollout(setup, tmp_path, monkeypatch):
    import opengato.agent.evaluate as ev

    ran = []
    monkeypatch.setattr(ev, "evaluate_task", lambda *a, **k: ran.append(a) or {})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write the results file"):
        run_eval(cfg_for(setup, str(blocker / "eval.json"), tasks=TASKS[:1], episodes=1))
    assert ran == []


def test_weights_packed_plain_and_int8(setup, monkeypatch):
    """Packed weights (the default) evaluate exactly as the model's own; int8 quantises the
    model that acts, and is recorded and warned about in the results."""
    import opengato.model.quantize as quantize

    quantised = []
    real = quantize.quantize_int8
    monkeypatch.setattr(
        quantize, "quantize_int8", lambda m: quantised.append(real(m)) or quantised[-1]
    )
    runs = {}
    for w in ("packed", "plain", "int8"):
        runs[w] = run_eval(cfg_for(setup, f"w-{w}.json", tasks=TASKS[:1], episodes=2, weights=w))
        assert len(quantised) == (w == "int8")
    returns = {w: [e["return"] for e in r["tasks"][TASKS[0]]["episodes"]] for w, r in runs.items()}
    assert returns["packed"] == returns["plain"]
    assert runs["int8"]["config"]["weights"] == "int8"
    assert any(w.startswith("INT8 WEIGHTS") for w in runs["int8"]["warnings"])
    assert not any(w.startswith("INT8") for w in runs["plain"]["warnings"])
