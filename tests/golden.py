"""Golden fingerprints: the proof that a refactor changes no numbers.

For every built-in task: reset with a fixed seed, take a few seeded random actions, tokenize
the episode and hash every array of the token stream (ids, kinds, positions, target mask,
timestep starts, patches, patch positions), the legal action-token ranges and the round trip
of the actions through the tokens. Then a fixed batch sampled by the mixture from shards of a
few of those episodes plus text and a caption, and the loss of a seeded `gato-1m` on it, and
the greedy actions a policy takes with it.

    python tests/golden.py --write      # record (only at a commit whose numbers are trusted)
    python tests/golden.py              # compare and print differences

tests/test_golden.py compares against tests/data/golden.json: a few tasks in the default
suite, every built-in task behind `-m slow`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "data" / "golden.json"
STEPS = 3
SEED = 1234
QUICK_TASKS = [
    "babyai/GoToRedBall",
    "metaworld/reach-v3",
    "metaworld-pixels/reach-v3",
    "classic/CartPole-v1",
    "classic/MountainCarContinuous-v0",
]
BATCH_TASKS = ["babyai/GoToRedBall", "classic/CartPole-v1", "metaworld-pixels/reach-v3"]


def _hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _stack(space, values):
    """The leading-axis stack of a list of values of `space` (written here on purpose, not
    imported, so the fingerprint does not move with the code it checks)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {k: _stack(s, [v[k] for v in values]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_stack(s, [v[i] for v in values]) for i, s in enumerate(space.spaces))
    if isinstance(space, spaces.Text):
        return list(values)
    return np.stack([np.asarray(v) for v in values])


def _mask(x) -> np.ndarray:
    """The target mask, under its old name or its new one."""
    return x.target_mask if hasattr(x, "target_mask") else x.loss


def _patch_tok(window) -> np.ndarray:
    """The positions of a window's IMAGE tokens, whose patches it carries in order: a field of
    the window before the refactor, read off its kinds since (the same int64 array)."""
    if hasattr(window, "patch_tok"):
        return window.patch_tok
    return np.flatnonzero(window.kind == 3)  # Kind.IMAGE


def _seq_hashes(seq) -> dict[str, str]:
    mask = _mask(seq)
    return {
        "ids": _hash(seq.ids),
        "kind": _hash(seq.kind),
        "obs_pos": _hash(seq.obs_pos),
        "target_mask": _hash(mask),
        "timestep_starts": _hash(seq.timestep_starts),
        "patches": _hash(seq.patches, seq.patch_pos),
        "n": str(len(seq.ids)),
    }


def rollout(name: str):
    """(env spaces, observations [STEPS + 1], actions [STEPS]) of a seeded random rollout."""
    from opengato.tasks import get_task

    task = get_task(name)
    env = task.make_env()
    try:
        obs, _ = env.reset(seed=SEED)
        env.action_space.seed(SEED)
        observations, actions = [obs], []
        for _ in range(STEPS):
            a = env.action_space.sample()
            obs, _, term, trunc, _ = env.step(a)
            observations.append(obs)
            actions.append(a)
            if term or trunc:
                break
        return env.observation_space, env.action_space, observations[: len(actions)], actions
    finally:
        env.close()


def task_fingerprint(tokenizer, name: str) -> tuple[dict, object]:
    obs_space, act_space, observations, actions = rollout(name)
    obs = _stack(obs_space, observations)
    act = _stack(act_space, actions)
    seq = tokenizer.tokenize_episode(obs_space, act_space, obs, act)
    out = _seq_hashes(seq)
    out["action_ranges"] = _hash(tokenizer.action_token_ranges(act_space))
    ids = np.stack([tokenizer.tokenize_action(act_space, a) for a in actions])
    back = tokenizer.detokenize(act_space, ids)
    out["action_ids"] = _hash(ids)
    out["action_roundtrip"] = _hash(*[np.asarray(x) for x in _leaves(back)])
    return out, seq


def _leaves(value):
    if isinstance(value, dict):
        for k in sorted(value):
            yield from _leaves(value[k])
    elif isinstance(value, tuple | list) and value and not isinstance(value[0], str):
        for v in value:
            yield from _leaves(v)
    else:
        yield np.asarray(value)


def batch_fingerprint(tokenizer, seqs: dict) -> dict:
    """Shards of a few episodes plus text and a caption; one mixture batch; a seeded model's
    loss on it and its greedy actions."""
    import torch

    from opengato.batches import mixture as mixture_mod
    from opengato.batches import shards as shards_mod
    from opengato.batches import windows as windows_mod
    from opengato.model.gato import Gato
    from opengato.model.presets import make_config

    meta_of = lambda name, kind, domain: {  # noqa: E731
        "name": name, "source_kind": kind, "domain": domain, "vocab_size": tokenizer.vocab_size,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shard_list = []
        for name in BATCH_TASKS:
            eps = [seqs[name]] * 3
            path = Path(tmp) / name.replace("/", "__")
            shard_list.append(
                shards_mod.write_shard(path, eps, meta_of(name, "control", name.split("/")[0]))
            )
        text = [tokenizer.tokenize_text("The quick brown fox jumps over the lazy dog. " * k)
                for k in (1, 3, 7)]  # fmt: skip
        shard_list.append(shards_mod.write_shard(Path(tmp) / "text", text,
                                                 meta_of("text", "text", "text")))  # fmt: skip
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
        cap = [tokenizer.tokenize_caption(image, "a red square on a blue field")] * 2
        shard_list.append(shards_mod.write_shard(Path(tmp) / "cap", cap,
                                                 meta_of("captions", "caption", "vision")))  # fmt: skip
        mixture = mixture_mod.Mixture(
            shard_list,
            context_len=256,
            split=windows_mod.Split("all"),
            pad_id=tokenizer.pad_id,
            pack=True,
            weights="text=0.5",
        )
        batch, windows = mixture.sample_batch(np.random.default_rng(7), 6)
        out = {
            "window_" + f: _hash(*[getattr(w, f) for w in windows])
            for f in ("ids", "kind", "obs_pos", "patches", "patch_pos")
        }
        out["window_patch_tok"] = _hash(*[_patch_tok(w) for w in windows])
        out["window_target_mask"] = _hash(*[_mask(w) for w in windows])
        out["window_origin"] = _hash(np.array(
            [[w.start, w.prompt_len, w.prompt_start, w.packed_at] for w in windows]
        ))  # fmt: skip
        out["batch_target_weight"] = _hash(batch.target_weight.numpy())
        out["batch_patch_index"] = _hash(batch.patch_index.numpy())
        torch.manual_seed(0)
        cfg = make_config("gato-1m", tokenizer.vocab_size, context_len=256)
        model = Gato(cfg)
        model.train()
        torch.manual_seed(1)
        _, loss = model(batch)
        out["train_loss"] = loss.item()
        model.eval()
        with torch.no_grad():
            _, loss = model(batch)
        out["eval_loss"] = float(loss)
        out["actions"] = _policy_actions(model, tokenizer)
    return out


def _policy_actions(model, tokenizer) -> dict:
    """Greedy actions of the model for 2 envs of two tasks over STEPS steps."""
    from opengato.agent.policy import GatoPolicy
    from opengato.tasks import get_task

    out = {}
    for name in ("babyai/GoToRedBall", "metaworld/reach-v3"):
        envs = [get_task(name).make_env() for _ in range(2)]
        obs = [e.reset(seed=SEED + i)[0] for i, e in enumerate(envs)]
        policy = GatoPolicy(model, tokenizer, envs[0].observation_space,
                            envs[0].action_space, num_envs=2, context_len=256)  # fmt: skip
        taken = []
        for _ in range(STEPS):
            acts = policy.act(_stack(envs[0].observation_space, obs))
            taken.append(np.asarray(acts))
            obs = [e.step(np.asarray(acts)[i])[0] for i, e in enumerate(envs)]
        for e in envs:
            e.close()
        out[name] = _hash(np.stack(taken))
    return out


def synthetic_spaces() -> dict:
    """Nested spaces no built-in task has: Dicts in Tuples, text beside images, MultiBinary."""
    from gymnasium import spaces

    box = spaces.Box(-3.0, 3.0, (2,), np.float32)
    return {
        "nested": spaces.Dict({
            "z": spaces.Tuple((box, spaces.Discrete(5, start=-2))),
            "a": spaces.Dict({"note": spaces.Text(12), "bits": spaces.MultiBinary(3)}),
            "img": spaces.Box(0, 255, (20, 18, 1), np.uint8),
            "md": spaces.MultiDiscrete([3, 4]),
        }),
        "tuple_action": spaces.Tuple((spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,), np.float32))),
        "int_box": spaces.Box(-4, 9, (3,), np.int64),
        "wide": spaces.Box(-np.inf, np.inf, (3,), np.float64),
    }  # fmt: skip


def space_fingerprint(tokenizer, name: str, space) -> dict:
    space.seed(SEED)
    values = [space.sample() for _ in range(STEPS)]
    out = _seq_hashes(_concat(tokenizer, space, values))
    if name != "nested":
        ids = np.stack([tokenizer.tokenize_action(space, v) for v in values])
        out["action_ids"] = _hash(ids)
        out["action_ranges"] = _hash(tokenizer.action_token_ranges(space))
        out["action_roundtrip"] = _hash(*list(_leaves(tokenizer.detokenize(space, ids))))
    return out


def _concat(tokenizer, space, values):
    from opengato.tokens.seq import TokenSeq

    seqs = tokenizer.tokenize_observations(space, _stack(space, values), len(values))
    return TokenSeq.concat(list(seqs))


def fingerprints(tasks: list[str]) -> dict:
    from opengato.tokens.tokenizer import Tokenizer

    tokenizer = Tokenizer()
    per_task, seqs = {}, {}
    for name, space in synthetic_spaces().items():
        per_task["space:" + name] = space_fingerprint(tokenizer, name, space)
    for name in tasks:
        per_task[name], seqs[name] = task_fingerprint(tokenizer, name)
    for name in BATCH_TASKS:
        if name not in seqs:
            _, seqs[name] = task_fingerprint(tokenizer, name)
    return {"tasks": per_task, "batch": batch_fingerprint(tokenizer, seqs)}


def compare(got: dict, want: dict) -> list[str]:
    """Differences, one line each (empty: identical). Losses within 1e-5 relative."""
    diffs = []
    for name, fp in got["tasks"].items():
        if name not in want["tasks"]:
            diffs.append(f"{name}: not in the golden file")
            continue
        for key, value in fp.items():
            if want["tasks"][name].get(key) != value:
                diffs.append(f"{name}: {key} {want['tasks'][name].get(key)} -> {value}")
    for key, value in got["batch"].items():
        old = want["batch"].get(key)
        if isinstance(value, float):
            if old is None or abs(value - old) > 1e-5 * max(1.0, abs(old)):
                diffs.append(f"batch: {key} {old} -> {value}")
        elif value != old:
            diffs.append(f"batch: {key} {old} -> {value}")
    return diffs


def main(argv: list[str]) -> int:
    from opengato.tasks import list_tasks

    got = fingerprints(list_tasks())
    if "--write" in argv:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({len(got['tasks'])} tasks)")
        return 0
    diffs = compare(got, json.loads(GOLDEN.read_text()))
    print("\n".join(diffs) or f"identical ({len(got['tasks'])} tasks and the batch)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
