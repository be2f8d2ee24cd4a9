"""Live episodes for `opengato serve`: one per view of a browser tab, stepped one request at a time.

A `LiveEpisode` runs the very loop `opengato eval` runs (`rollout.play_batch`, a batch of one
env): the same reset seed, the same prompt drawn with that seed, the same policy seed, so a
served episode is the evaluation episode of that seed, step for step. `play_batch` is a
generator that yields the env operations a step needs; here each request carries out the
pending ones (one env step, rendered) and sends the outcome back, which makes the policy act
for the next step.

`Agents` keeps the checkpoints that episodes act with, loaded once each by path; `Episodes`
keeps the live episodes by id. Neither is thread-safe on purpose: the app calls them from one
worker thread only (serve/app.py), which is also what keeps torch and MuJoCo's EGL contexts
(bound to the thread that made them) safe.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opengato.agent.eval_config import EvalConfig
from opengato.agent.prompts import env_prompts, prompt_source
from opengato.agent.rollout import make_policy, new_episode, play_batch
from opengato.agent.scores import normalized_score
from opengato.data.root import DatasetError, data_root
from opengato.seeds import EVAL_SEED_START, overlap
from opengato.tasks import Task, get_task

NEVER_STOP_RECORDING = 1 << 62
"""`play_batch`'s frame budget: every step is rendered (the list is emptied after each read)."""


class ServeError(ValueError):
    """Bad input from the page (an unknown task or checkpoint): shown there as its message."""

    status = 400
    """The HTTP status it is answered with."""


class UnknownEpisode(ServeError):
    """An episode id that is not live."""

    status = 404


def encode_frame(frame: np.ndarray | None, quality: int = 85) -> str | None:
    """An RGB frame (H, W, 3) uint8 as a `data:image/jpeg;base64,...` URL (None stays None)."""
    from PIL import Image

    if frame is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, np.uint8)).convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jsonable(value: Any) -> Any:
    """An action (numpy arrays, ints, dicts of them) as plain JSON values."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def reference_scores(task: Task, scores: dict[str, dict]) -> dict:
    """The expert's and the random policy's scores of `task` from the scores table (None where
    the table has none): mean returns, and success rates for tasks that record success."""
    entry = scores.get(task.name) or {}
    twin = (scores.get(task.scores_from) or {}) if task.scores_from else {}
    out = {"metric": task.metric}
    for key in ("expert", "random", "expert_success_rate", "random_success_rate"):
        out[key] = entry.get(key, twin.get(key) if key.startswith("random") else None)
    return out


# --------------------------------------------------------------------------- checkpoints


class Agents:
    """Checkpoints loaded by path: the served one (always kept) and up to `keep` others, the
    least recently used dropped first. `load_agent`'s keys `uniform` and `random:<preset>` work."""

    def __init__(self, served: str, device: str, keep: int = 4, int8: bool = False):
        from opengato.model.checkpoint import load_agent

        self.device, self.keep, self.int8 = device, keep, int8
        self.served = self.key(served)
        self.pinned = load_agent(served, device, int8=int8)
        self.others: OrderedDict[str, tuple] = OrderedDict()

    @staticmethod
    def key(checkpoint: str) -> str:
        """The checkpoint folder a path names (absolute), or the baseline's name."""
        from opengato.model.checkpoint import resolve_checkpoint

        checkpoint = checkpoint.strip()
        if checkpoint == "uniform" or checkpoint.startswith("random:"):
            return checkpoint
        return str(resolve_checkpoint(checkpoint).resolve())

    def get(self, checkpoint: str | None) -> tuple[str, tuple]:
        """(key, (model, tokenizer, config)) of a checkpoint (None or empty: the served one).
        Raises ServeError with the reason when it is missing or not a checkpoint."""
        from opengato.model.checkpoint import load_agent

        if not checkpoint or not checkpoint.strip():
            return self.served, self.pinned
        try:
            key = self.key(checkpoint)
            if key == self.served:
                return key, self.pinned
            if key not in self.others:
                self.others[key] = load_agent(key, self.device, int8=self.int8)
                while len(self.others) > self.keep:
                    self.others.popitem(last=False)
        except Exception as e:  # CheckpointError, an unknown preset, an unreadable file
            raise ServeError(f"cannot load checkpoint {checkpoint.strip()!r}: {e}") from e
        self.others.move_to_end(key)
        return key, self.others[key]


# --------------------------------------------------------------------------- episodes


@dataclass
class LiveEpisode:
    """One task played by one checkpoint from one seed, a step per `step()`."""

    task: Task
    seed: int
    checkpoint: str
    env: Any
    policy: Any
    play: Any
    """The `play_batch` generator of this episode."""
    pending: list | None
    """The env operations `play` asked for and that the next step carries out."""
    record: dict
    """`play_batch`'s record of the episode: return, length, success, error."""
    frames: list = field(default_factory=list)
    tokens: list[int] | None = None
    """The action tokens the policy sampled for the pending step."""
    notes: list[str] = field(default_factory=list)
    reference: dict = field(default_factory=dict)
    """The task's expert and random scores (`reference_scores`)."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def done(self) -> bool:
        return self.pending is None

    def _advance(self, outcome: list[dict] | None) -> None:
        """Send `outcome` to the loop (None: start it) and keep what it asks for next."""
        try:
            self.pending = next(self.play) if outcome is None else self.play.send(outcome)
        except StopIteration:
            self.pending = None
        tokens = getattr(self.policy, "last_action_ids", None)  # GatoPolicy only; (1, n_act)
        acted = self.pending is not None and tokens is not None and len(tokens)
        self.tokens = tokens[0].tolist() if acted else None

    def _run_pending(self) -> list[dict]:
        return [fn(self.env, self.task, *args) for _, fn, args in self.pending]

    def start(self) -> dict:
        """Reset the env and let the policy choose its first action; the first view."""
        self._advance(None)  # asks for the reset
        self._advance(self._run_pending())  # records it, acts, asks for the first step
        return self.view(action=None, tokens=None, reward=None)

    def step(self) -> dict:
        """Carry out one env step with the action the policy chose; the view after it."""
        if self.done:
            return self.view(action=None, tokens=None, reward=None)
        (_, _, (action, _)) = self.pending[0]
        tokens, before = self.tokens, self.record["return"]
        self._advance(self._run_pending())
        return self.view(action=jsonable(action), tokens=tokens,
                         reward=self.record["return"] - before)  # fmt: skip

    def view(self, action: Any, tokens: list[int] | None, reward: float | None) -> dict:
        """What the page shows after a step (JSON): the frame, the return so far, the action
        and the action tokens that produced it."""
        frame = self.frames[-1] if self.frames else None
        self.frames.clear()  # keep none: the next step renders its own
        r = self.record
        final = None
        if self.done and r["error"] is None and self.reference:
            score = float(bool(r["success"])) if self.task.metric == "success_rate" else r["return"]
            key = "_success_rate" if self.task.metric == "success_rate" else ""
            rand, expert = self.reference[f"random{key}"], self.reference[f"expert{key}"]
            final = None if None in (rand, expert) else normalized_score(score, rand, expert)
        return {
            "id": self.id, "task": self.task.name, "seed": self.seed,
            "checkpoint": self.checkpoint, "step": r["length"], "return": r["return"],
            "reward": reward, "success": r["success"], "done": self.done,
            "error": r["error"], "action": action, "action_tokens": tokens,
            "mission": _mission(self.env), "normalized": final, "frame": encode_frame(frame),
        }  # fmt: skip

    def close(self) -> None:
        self.play.close()
        self.env.close()


def _mission(env) -> str | None:
    """The instruction of a BabyAI-like env (its `mission`), None for others."""
    mission = getattr(env.unwrapped, "mission", None)
    return mission if isinstance(mission, str) else None


def seed_notes(task: Task, seed: int, data_dirs: list[str | None]) -> list[str]:
    """A warning when `seed` is not a held-out start state of `task`: when the recorded
    demonstrations under `data_dirs` used it (the check `opengato eval` makes), or, with none
    recorded, when it lies below the evaluation seeds."""
    from opengato.data.episodes import read_collection_meta

    metas = [m for d in dict.fromkeys(data_dirs) if (m := read_collection_meta(task.name, d))]
    if any(overlap([seed], m) for m in metas):
        return [f"seed {seed} started a demonstration of {task.name}: the checkpoint may have "
                f"trained on this start state (held-out seeds start at {EVAL_SEED_START})"]  # fmt: skip
    if not metas and seed < EVAL_SEED_START:
        return [f"seed {seed} is below {EVAL_SEED_START}, where demonstrations' seeds lie (none "
                "were found to check it against)"]  # fmt: skip
    return []


def start_episode(
    task_name: str,
    seed: int,
    key: str,
    agent: tuple,
    data_dir: str | None,
    scores: dict,
    weights: str = "packed",
) -> tuple[LiveEpisode, dict]:
    """A new episode of `task_name` from `seed`, played by `agent` (checkpoint `key`), prompted
    as `opengato eval` prompts (a demonstration under `data_dir`, drawn with the seed); without
    demonstrations it plays unprompted and says so. `scores`: the scores table; `weights`: as
    `opengato eval --weights` (an int8 agent is already quantised). Returns it and its first
    view, with the task's reference scores and notes about the seed and prompt."""
    try:
        task = get_task(task_name.strip())
    except KeyError as e:
        raise ServeError(e.args[0]) from e
    env = task.make_env(render_mode="rgb_array")
    try:
        return _start(task, env, seed, key, agent, data_dir, scores, weights)
    except BaseException:
        env.close()
        raise


def _start(
    task: Task, env, seed: int, key: str, agent: tuple, data_dir, scores: dict, weights: str
):  # fmt: skip
    cfg = EvalConfig(checkpoint=key, episodes=1, num_envs=1, start_seed=seed, data_dir=data_dir,
                     weights=weights)  # fmt: skip
    train_dir = (agent[2].get("train") or {}).get("data_dir")
    notes = seed_notes(task, seed, [data_dir, train_dir])
    source = prompt_source(agent, cfg)
    try:
        prompts = env_prompts(env, task, *source) if source else []
    except DatasetError:
        prompts = []
    if source and not prompts:
        notes.append(f"no demonstrations of {task.name} under {data_root(data_dir)}: "
                     "it acts without a prompt")  # fmt: skip
    policy = make_policy(agent, env.observation_space, env.action_space, 1, cfg)
    record, frames = new_episode(seed), []
    play = play_batch(policy, env.observation_space, env.action_space, [task], [record],
                      [prompts], {0: frames}, NEVER_STOP_RECORDING)  # fmt: skip
    ep = LiveEpisode(task, seed, key, env, policy, play, None, record, frames, notes=notes,
                     reference=reference_scores(task, scores))  # fmt: skip
    return ep, {**ep.start(), "notes": notes, "reference": ep.reference}


class Episodes:
    """The live episodes by id; beyond `capacity`, the least recently used one is closed."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self.live: OrderedDict[str, LiveEpisode] = OrderedDict()

    def add(self, ep: LiveEpisode) -> None:
        self.live[ep.id] = ep
        while len(self.live) > self.capacity:
            self.live.popitem(last=False)[1].close()

    def get(self, episode_id: str) -> LiveEpisode:
        """The episode, or ServeError when it is not live (closed, or evicted)."""
        if episode_id not in self.live:
            raise UnknownEpisode(
                f"episode {episode_id!r} is not live (it was closed, or dropped when more than "
                f"{self.capacity} were open); start a new one"
            )
        self.live.move_to_end(episode_id)
        return self.live[episode_id]

    def close(self, episode_id: str) -> bool:
        ep = self.live.pop(episode_id, None)
        if ep is not None:
            ep.close()
        return ep is not None

    def close_all(self) -> None:
        while self.live:
            self.live.popitem()[1].close()
