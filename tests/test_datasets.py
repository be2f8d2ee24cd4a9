"""Collection, Minari round trips, scores, filtering, timeouts, resume, corpora."""

import json
import os
import time
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from opengato.data import corpora, images
from opengato.data.collect import CollectConfig, run_collect
from opengato.data.episodes import Episode, dataset_id, load_episodes, minari_dir
from opengato.data.root import DatasetError, data_root
from opengato.data.scores import filter_episodes, keep_episode, load_scores
from opengato.tasks import Task, get_task, register_task, registry_snapshot

TASKS = "classic/CartPole-v1,babyai/GoToRedBall,metaworld/drawer-close-v3"


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # spawned workers, which import each suite afresh (a fork would inherit the parent's imports)
    cfg = CollectConfig(tasks=TASKS, episodes=2, random_episodes=2, data_dir=str(root), workers=2)
    return root, run_collect(cfg)


def test_collect_round_trip(collected):
    root, summary = collected
    for name in TASKS.split(","):
        task = get_task(name)
        space = task.make_env().observation_space
        episodes = load_episodes(name, root)
        assert summary["tasks"][name]["kept"] == len(episodes) == 2
        for ep in episodes:
            T = len(ep)
            assert ep.actions.shape[0] == T and T > 0
            if isinstance(space, gym.spaces.Dict):
                assert len(ep.observations["mission"]) == T + 1
                assert ep.observations["grid"].shape == (T + 1, 7, 7, 3)
                obs0 = {k: v[0] for k, v in ep.observations.items()}
            else:
                assert ep.observations.shape == (T + 1, *space.shape)
                obs0 = ep.observations[0]
            assert space.contains(obs0)
        assert [e.seed for e in episodes] == [0, 1]
    cart = load_episodes("classic/CartPole-v1", root)
    assert all(e.episode_return == 500 for e in cart)
    assert all(e.success for e in load_episodes("metaworld/drawer-close-v3", root))


def test_scores_table(collected):
    root, _ = collected
    scores = load_scores(root)
    assert scores["classic/CartPole-v1"]["expert"] == 500
    assert scores["classic/CartPole-v1"]["random"] < 100
    assert scores["babyai/GoToRedBall"]["expert_success_rate"] == 1.0
    assert scores["metaworld/drawer-close-v3"]["metric"] == "success_rate"


def test_resume_collects_only_missing(collected, tmp_path):
    root, _ = collected
    meta = minari_dir(root) / dataset_id("classic/CartPole-v1") / "opengato.json"
    mtime = meta.stat().st_mtime
    cfg = CollectConfig(
        tasks="classic/CartPole-v1,classic/MountainCar-v0",
        episodes=2,
        random_episodes=2,
        data_dir=str(root),
        workers=1,
    )
    out = run_collect(cfg)
    assert out["tasks"]["classic/CartPole-v1"]["status"] == "up to date"
    assert out["tasks"]["classic/MountainCar-v0"]["status"] == "collected"
    assert meta.stat().st_mtime == mtime
    assert not list(minari_dir(root).glob(".tmp-*"))


def test_filter_is_relative_to_random():
    assert keep_episode(-150, expert=-140, random=-1200)
    assert not keep_episode(-400, expert=-140, random=-1200)
    assert keep_episode(420, expert=500, random=20) and not keep_episode(400, expert=500, random=20)
    eps = [Episode(np.zeros(2), np.zeros(1), np.array([r])) for r in (500.0, 100.0, 450.0)]
    kept, dropped = filter_episodes(eps, expert=500, random=20)
    assert [e.episode_return for e in kept] == [500.0, 450.0] and dropped == 1
    eps[0].success, eps[1].success, eps[2].success = True, False, True
    assert filter_episodes(eps, 0, 0, metric="success_rate")[1] == 1


class _Hangs:
    """An expert that never returns on odd seeds."""

    def __init__(self, env):
        self.env = env

    def reset(self):
        self.seed = self.env.get_wrapper_attr("last_seed")

    def act(self, obs):
        while self.seed % 2:
            time.sleep(0.01)
        return 0


class _RecordSeed(gym.Wrapper):
    def reset(self, *, seed=None, options=None):
        self.last_seed = seed
        return self.env.reset(seed=seed, options=options)


def test_timeout_drops_and_counts(tmp_path):
    register_task(
        Task(
            "test/hangs",
            "test",
            lambda render_mode=None: _RecordSeed(gym.make("CartPole-v1")),
            _Hangs,
            50,
            expert_name="hangs",
        ),
        overwrite=True,
    )
    cfg = CollectConfig(
        "test/hangs",
        episodes=4,
        random_episodes=1,
        data_dir=str(tmp_path),
        workers=2,
        episode_timeout_s=0.5,
    )
    out = run_collect(cfg)["tasks"]["test/hangs"]
    assert out["failed"] == 2 and out["kept"] + out["dropped"] == 2
    assert all("timeout" in r for r in out["reasons"])
    assert sorted(e.seed for e in load_episodes("test/hangs", tmp_path)) == [0, 2]
    # the expert reference is over the 2 that finished, and says so (evaluation warns)
    row = load_scores(tmp_path)["test/hangs"]
    assert row["expert_episodes"] == 2 and row["expert_failed"] == 2


def test_corrupt_dataset_names_the_file(collected, tmp_path):
    import shutil

    root, _ = collected
    src = minari_dir(root) / dataset_id("classic/CartPole-v1")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "data" / "main_data.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="main_data.hdf5"):
        load_episodes(str(bad))
    with pytest.raises(DatasetError, match="no Minari dataset"):
        load_episodes(str(tmp_path))
    with pytest.raises(DatasetError, match="opengato collect"):
        load_episodes("classic/Acrobot-v1", root)
    # a foreign Minari dataset given by path reads back too
    assert len(load_episodes(str(src))) == 2


def test_text_corpus_is_deterministic(tmp_path):
    a = corpora.build_text_corpus(tmp_path / "a")
    b = corpora.build_text_corpus(tmp_path / "b")
    assert a == b and a["text/python-docs"] > 100 and a["text/qa"] > 100
    assert corpora.load_text(tmp_path / "a") == corpora.load_text(tmp_path / "b")
    qa = corpora.load_qa(tmp_path / "a")
    assert any("What does the Python keyword" in q for q, _ in qa)
    assert all(ans for _, ans in qa)
    assert not any("****" in ans for _, ans in qa)
    # the pairs of about pydocs.HELD_OUT of the sources are held out (enough to compare two models
    # question by question), none of them a training question, and no held-out answer is
    # training text: not in a training document, not a training pair's answer
    held_out = corpora.load_qa(tmp_path / "a", "valid")
    assert 0.05 < len(held_out) / (len(held_out) + len(qa)) < 0.2 and len(held_out) >= 100
    assert not {q for q, _ in held_out} & {q for q, _ in qa}
    rows = corpora.load_qa_rows(tmp_path / "a", "valid")
    assert corpora.trained_answers(rows, tmp_path / "a") == 0
    assert corpora.trained_answers(corpora.load_qa_rows(tmp_path / "a"), tmp_path / "a") == len(qa)
    # no held-out paragraph is training text (pydoc topics repeat each other's sections)
    train = " ".join(" ".join(d.split()) for d in corpora.load_text(tmp_path / "a"))
    paragraphs = [" ".join(p.split()) for d in corpora.load_text(tmp_path / "a", "valid")
                  for p in d.split("\n\n")]  # fmt: skip
    assert len(paragraphs) > 100 and not any(len(p) >= 40 and p in train for p in paragraphs)
    # a module's functions are asked about, and their answers are in the module's document
    answer = dict(qa + held_out)["What does the Python function json.dumps do?"]
    assert answer.startswith("Serialize") and any(
        answer.split(".")[0] in " ".join(d.split()) for d in corpora.load_text(tmp_path / "a")
    )


def test_the_default_text_model_reads_training_documents_only(tmp_path):
    # the built-in SentencePiece model is fitted to the text training reads, never to held-out
    # text (it read every pydoc topic before: held-out documents then took 4% fewer tokens)
    from opengato.tokens.text import default_text_corpus

    corpora.build_text_corpus(tmp_path)
    corpus = default_text_corpus()
    assert corpus == "\n".join(corpora.load_text(tmp_path))
    normed = " ".join(corpus.split())
    held_out = [" ".join(p.split()) for d in corpora.load_text(tmp_path, "valid")
                for p in d.split("\n\n")]  # fmt: skip
    assert len(held_out) > 100 and not any(len(p) >= 40 and p in normed for p in held_out)


def test_captions_are_valid_and_held_out(tmp_path):
    counts = corpora.build(["vision/scenes", "vision/photos"], tmp_path)
    assert counts["vision/scenes"] > 0 and counts["vision/photos"] > 1000
    for split in ("train", "test"):
        items = corpora.load_captions(tmp_path, split)
        assert items
        for image, caption, _ in items[:200]:
            assert image.dtype == np.uint8 and image.shape[2] == 3
            assert image.shape[0] % 16 == 0 and image.shape[1] % 16 == 0 and caption
    for _, _, attrs in corpora.load_captions(tmp_path, "train", "scenes"):
        assert not any((o["color"], o["shape"]) in images.HELD_OUT for o in attrs)
    test = corpora.load_captions(tmp_path, "test", "scenes")
    assert all(any((o["color"], o["shape"]) in images.HELD_OUT for o in a) for _, _, a in test)
    # a validation scene is never a training picture (one-object scenes repeat: 180 of them)
    train = {image.tobytes() for image, _, _ in corpora.load_captions(tmp_path, "train", "scenes")}
    valid = corpora.load_captions(tmp_path, "valid", "scenes")
    assert len(corpora.load_captions(tmp_path, "valid", "photos")) > 150  # validated on too
    assert len(valid) > 500 and not any(image.tobytes() in train for image, _, _ in valid)
    rows = corpora.make_scenes(5, seed=1)
    assert json.dumps([r["caption"] for r in rows]) == json.dumps(
        [r["caption"] for r in corpora.make_scenes(5, seed=1)]
    )


def test_collect_into_a_relative_data_dir(tmp_path, monkeypatch):
    """A relative --data-dir works (Minari would otherwise join the path onto itself)."""
    monkeypatch.chdir(tmp_path)
    run_collect(CollectConfig(tasks="classic/CartPole-v1", episodes=2, random_episodes=2,
                              data_dir="rel/data", workers=1))  # fmt: skip
    assert len(load_episodes("classic/CartPole-v1", "rel/data")) == 2


def test_collection_leaves_the_users_minari_path_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "users-own"))
    run_collect(CollectConfig(tasks="classic/CartPole-v1", episodes=1, random_episodes=1,
                              data_dir=str(tmp_path / "data"), workers=1))  # fmt: skip
    assert os.environ["MINARI_DATASETS_PATH"] == str(tmp_path / "users-own")
    assert len(load_episodes("classic/CartPole-v1", tmp_path / "data")) == 1
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    minari_dir(tmp_path / "data")
    assert "MINARI_DATASETS_PATH" not in os.environ


def test_data_root_is_read_when_used(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGATO_DATA", str(tmp_path / "a"))
    assert data_root() == tmp_path / "a"
    monkeypatch.setenv("OPENGATO_DATA", str(tmp_path / "b"))
    assert data_root() == tmp_path / "b" and minari_dir() == tmp_path / "b" / "minari"
    monkeypatch.delenv("OPENGATO_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".opengato" / "data"


def test_a_task_registered_at_run_time_is_collected_and_evaluated_in_workers(tmp_path):
    """Collection and evaluation start their workers alike (opengato/workers.py): each worker
    gets this process's registry, so a task registered here, with a lambda for its factory and
    a class defined in this function for its expert, runs in 2 workers of either verb."""
    from opengato.agent.eval_config import EvalConfig
    from opengato.agent.evaluate import run_eval

    class Lean:
        def __init__(self, env):
            pass

        def reset(self):
            pass

        def act(self, obs):
            return int(obs[2] + 0.5 * obs[3] > 0)

    names = ["runtime/cart-a", "runtime/cart-b"]
    for name in names:
        make_env = lambda render_mode=None: gym.make("CartPole-v1", render_mode=render_mode)  # noqa: E731
        register_task(Task(name, "runtime", make_env, Lean, 30), overwrite=True)
    spec = ",".join(names)
    for workers in (2, 1):
        data = tmp_path / f"data{workers}"
        out = run_collect(CollectConfig(spec, episodes=2, random_episodes=2, data_dir=str(data),
                                        workers=workers))["tasks"]  # fmt: skip
        assert [out[n]["kept"] for n in names] == [2, 2]
    for name in names:  # the same episodes whichever process ran them
        two, one = load_episodes(name, tmp_path / "data2"), load_episodes(name, tmp_path / "data1")
        assert [e.observations.tobytes() for e in two] == [e.observations.tobytes() for e in one]
    cfg = EvalConfig("uniform", tasks=names, episodes=2, num_envs=1, workers=2, bootstrap=10,
                     data_dir=str(tmp_path / "data2"), out=str(tmp_path / "eval.json"))  # fmt: skip
    results = run_eval(cfg)["tasks"]
    assert all("error" not in results[n] and results[n]["n_episodes"] == 2 for n in names)


def test_a_task_that_cannot_reach_workers_is_named(monkeypatch):
    import threading

    from opengato import tasks

    lock = threading.Lock()
    task = Task("mine/locked", "mine", lambda render_mode=None, _lock=lock: None, None, 10)
    monkeypatch.setitem(tasks._REGISTRY, task.name, task)
    with pytest.raises(TypeError, match="'mine/locked' cannot be sent to worker processes"):
        registry_snapshot()


def test_episodes_per_domain_records_every_seed(tmp_path):
    """More demonstrations for some domains (or tasks): each dataset records the seeds it kept
    and the range it attempted, so evaluation seeds stay out of both; a changed count is
    collected again, an unchanged one is up to date."""
    from opengato.data.episodes import read_collection_meta
    from opengato.seeds import training_seeds

    spec = "classic/CartPole-v1,classic/MountainCar-v0,babyai/GoToRedBall"
    cfg = CollectConfig(spec, episodes=2, episodes_per_domain="classic=4,classic/Mountain*=3",
                        random_episodes=2, data_dir=str(tmp_path), workers=2)  # fmt: skip
    out = run_collect(cfg)["tasks"]
    want = {"classic/CartPole-v1": 4, "classic/MountainCar-v0": 3, "babyai/GoToRedBall": 2}
    for name, n in want.items():
        meta = read_collection_meta(name, tmp_path)
        assert out[name]["kept"] == len(meta["seeds"]) == n
        assert meta["episodes_requested"] == n and training_seeds(meta) == set(range(n))
        assert [e.seed for e in load_episodes(name, tmp_path)] == list(range(n))
    again = run_collect(replace(cfg, episodes_per_domain="classic=4,classic/Mountain*=5"))
    status = {n: t["status"] for n, t in again["tasks"].items()}
    assert status == {"classic/CartPole-v1": "up to date", "classic/MountainCar-v0": "collected",
                      "babyai/GoToRedBall": "up to date"}  # fmt: skip
    assert again["tasks"]["classic/MountainCar-v0"]["kept"] == 5
    with pytest.raises(KeyError, match="'classik' names no domain"):
        run_collect(replace(cfg, episodes_per_domain="classik=4"))
    with pytest.raises(ValueError, match="not `name=episodes`"):
        run_collect(replace(cfg, episodes_per_domain="classic:4"))
    with pytest.raises(ValueError, match=r"expert seeds \[0, 500001\) must lie in"):
        run_collect(replace(cfg, episodes_per_domain="babyai=500001"))


def test_collection_jobs_cover_each_episode_once():
    """A worker job is a run of one task's seeds for one policy (so a worker builds that env
    once per run), and together the jobs hold every episode exactly once."""
    from opengato.data.collect import EPISODES_PER_JOB, _jobs
    from opengato.seeds import RANDOM_SEED_START

    tasks = [get_task("classic/CartPole-v1"), get_task("babyai/GoToRedBall")]
    counts = {"classic/CartPole-v1": 120, "babyai/GoToRedBall": 7}
    randoms = dict.fromkeys(counts, 30)
    for workers in (1, 2, 16):
        cfg = CollectConfig(episodes=1, random_episodes=30, seed=5, workers=workers)
        jobs = _jobs(tasks, cfg, counts, randoms)
        episodes = [(task, seed, policy) for task, seeds, policy, _ in jobs for seed in seeds]
        assert len(episodes) == len(set(episodes)) == 120 + 7 + 2 * 30
        assert {(t, s) for t, s, p in episodes if p == "expert"} == {
            (t, 5 + i) for t, n in counts.items() for i in range(n)}  # fmt: skip
        assert all(s >= RANDOM_SEED_START for _, s, p in episodes if p == "random")
        assert max(len(seeds) for _, seeds, _, _ in jobs) <= EPISODES_PER_JOB
    assert len(_jobs(tasks, CollectConfig(random_episodes=30, workers=1), counts, randoms)) == 6
    no_random = {"classic/CartPole-v1": 0, "babyai/GoToRedBall": 30}  # a shipped random score
    jobs = _jobs(tasks, CollectConfig(workers=1), counts, no_random)
    assert not [j for j in jobs if j[0] == "classic/CartPole-v1" and j[2] == "random"]
    # Handed out longest step limit first, whatever the order asked: CartPole's 500 steps, then
    # GoToRedBall's 64, so that the last jobs are short.
    assert [get_task(t.name).max_episode_steps for t in tasks] == [500, 64]
    for order in (tasks, tasks[::-1]):
        names = [job[0] for job in _jobs(order, CollectConfig(workers=2), counts, randoms)]
        assert names == sorted(names, key=lambda n: n != "classic/CartPole-v1")
    # Tasks of one step limit take turns, so that a task's jobs start apart.
    same = ("metaworld/reach-v3", "metaworld/push-v3")
    jobs = _jobs([get_task(n) for n in same], CollectConfig(workers=1),
                 dict.fromkeys(same, 150), dict.fromkeys(same, 0))  # fmt: skip
    assert [job[0] for job in jobs] == list(same) * 3  # 150 episodes: 3 jobs of 50 each


def test_retrained_expert_weights_make_the_dataset_stale(tmp_path):
    """A trained expert's weights are part of the freshness hash: `opengato train-expert`
    writing new weights makes the next collect run again instead of keeping the old data."""
    from opengato.data.generator import generator_hash

    weights = tmp_path / "expert.safetensors"
    weights.write_bytes(b"first weights")
    task = replace(get_task("classic/CartPole-v1"), expert_weights=weights)
    first = generator_hash(task)
    assert generator_hash(task) == first
    weights.write_bytes(b"retrained weights")
    assert generator_hash(task) != first
    assert generator_hash(replace(task, expert_weights=None)) == generator_hash(
        get_task("classic/CartPole-v1")
    )


def test_other_package_versions_make_the_dataset_stale(monkeypatch):
    """The env packages' versions are part of the freshness hash (a new Meta-World or MuJoCo
    changes the episodes), as they are of the shipped random-score key."""
    from opengato.data import generator

    task = get_task("classic/CartPole-v1")
    monkeypatch.setattr(generator, "_HASHES", {})
    before = generator.generator_hash(task), generator.env_hash(task)
    real = generator._package_versions
    monkeypatch.setattr(generator, "_HASHES", {})
    monkeypatch.setattr(generator, "_package_versions", lambda mods: real(mods) + ",x==2")
    after = generator.generator_hash(task), generator.env_hash(task)
    assert after[0] != before[0] and after[1] != before[1]


def test_hashes_hold_while_the_code_on_disk_changes(monkeypatch):
    """A task's hashes read its code once per process: an edit on disk during a long collection
    (which re-ran 125 tasks' random episodes once) leaves the tasks hashed after it current."""
    from opengato.data import generator

    task = get_task("classic/CartPole-v1")
    monkeypatch.setattr(generator, "_HASHES", {})
    first = generator.generator_hash(task), generator.env_hash(task)
    monkeypatch.setattr(generator, "_HASHES", {})
    monkeypatch.setattr(generator.inspect, "getsource", lambda obj: "edited on disk")
    assert (generator.generator_hash(task), generator.env_hash(task)) == first


def test_datasets_are_tokenised_in_the_collections_pool_as_each_is_written(tmp_path, capsys):
    """`run_collect(after=shard_job(...))`, as `opengato demo` runs it: each task and corpus is
    tokenised in the workers once it is on disk, from its final files. Building the shards
    afterwards finds every one current, with the arrays a build in this process makes."""
    from opengato.batches.sources import build_shards, resolve_sources, shard_job
    from opengato.tokens.tokenizer import Tokenizer

    spec, root = "classic/CartPole-v1,babyai/GoToRedBall,text/qa", tmp_path / "data"
    tok = Tokenizer()
    cfg = CollectConfig(spec, episodes=3, random_episodes=2, data_dir=str(root), workers=2)
    out = run_collect(cfg, after=shard_job(tok.config, root, tmp_path / "pool"))
    assert sorted(out["after"]) == sorted(spec.split(",")) and out["corpora"]["text/qa"] > 0
    assert "the jobs run on each dataset as it was written (3) ended" in capsys.readouterr().out
    for name, (named, built, _) in out["after"].items():  # built there, not found current
        assert named == name and [x for x in built if x.startswith("tokenised Shard(")], built
    notes: list[str] = []
    pool = build_shards(resolve_sources(spec), tok, root, tmp_path / "pool", log=notes.append)
    assert notes == []  # all current: made from the datasets as they are now
    here = build_shards(resolve_sources(spec), tok, root, tmp_path / "here", log=notes.append)
    for a, b in zip(pool, here, strict=True):
        assert a.num_tokens == out["after"][a.name][2] > 0
        for f in sorted(a.path.glob("*.npy")):
            assert np.array_equal(np.load(f), np.load(b.path / f.name)), f.name
    # With a task to collect, `after` runs on the datasets already current too (finding their
    # shards current); with none, no pool starts and it does not run.
    (root / "minari" / "opengato" / "classic-CartPole-v1-v0").rename(tmp_path / "gone")
    again = run_collect(cfg, after=shard_job(tok.config, root, tmp_path / "pool"))
    assert again["tasks"]["classic/CartPole-v1"]["status"] == "collected"
    assert {again["tasks"][t]["status"] for t in ("babyai/GoToRedBall",)} == {"up to date"}
    assert sorted(again["after"]) == sorted(spec.split(","))
    assert again["after"]["babyai/GoToRedBall"][1] == []  # current: nothing built
    assert again["after"]["classic/CartPole-v1"][1] != []  # collected anew: built again
    assert run_collect(cfg, after=shard_job(tok.config, root, tmp_path / "pool"))["after"] == {}
