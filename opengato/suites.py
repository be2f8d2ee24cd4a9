"""The environments of the built-in suites, wrapped to the space conventions of `opengato.tasks`.

Observation layouts:

| suite | observation | action |
| --- | --- | --- |
| `babyai/*` | Dict(direction: Discrete(4), grid: int64 Box (7, 7, 3) in [0, (10, 5, 2)], mission: Text) | Discrete(7) |
| `metaworld/*` | float32 Box (39,), unbounded | float32 Box (4,) in [-1, 1] |
| `metaworld-pixels/*` | Dict(image: uint8 (64, 64, 3), proprio: float32 Box (4,)) | float32 Box (4,) in [-1, 1] |
| `classic/*` | float32 Box, unbounded | gymnasium's own (Discrete or float Box) |

Each suite is a factory `make_<suite>(..., render_mode=None) -> gym.Env` and the list of what
it offers; `opengato.builtin` turns them into tasks with their experts. The suites whose
experts were trained here (MuJoCo, DM Control, MinAtar) keep their factory beside their expert,
in `opengato/experts/{mujoco,dmc,minatar}.py`, with their layouts.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from opengato.files import atomic_write_bytes, cache_dir

# --------------------------------------------------------------------------- wrappers


class UnboundedFloatObs(gym.ObservationWrapper):
    """Float32 observations in an unbounded Box: simulators step outside their declared
    bounds (Meta-World's goal slots, LunarLander when crashing), and the tokenizer rejects
    values outside the space."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = env.observation_space.shape
        self.observation_space = spaces.Box(-np.inf, np.inf, shape, np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32)


# BabyAI grid cells are (object, colour, state) indices: objects 0..10, colours 0..5, states 0..2.
BABYAI_GRID_HIGH = np.array([10, 5, 2], dtype=np.int64)
BABYAI_MISSION_CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 ,.'"
BABYAI_MISSION_MAX_LEN = 512


class BabyAIObs(gym.ObservationWrapper):
    """BabyAI's observation as Dict(direction, grid, mission).

    The 7x7x3 view is a grid of *discrete* indices, so it becomes an int64 Box bounded by
    the real index ranges (a uint8 HxWx3 Box would read as an image). The mission becomes a
    `Text` space (Minari cannot serialise minigrid's MissionSpace). Resets run quietly:
    minigrid prints "Sampling rejected" lines to stdout. The env makes its view with `view`
    in place of minigrid's own `gen_obs`: the same arrays, ~3.5x faster (a method here, so that
    its code is in the env's hash, generator.env_hash).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        base.gen_obs = functools.partial(BabyAIObs.view, base)  # its reset and step call it
        high = np.broadcast_to(BABYAI_GRID_HIGH, (7, 7, 3)).copy()
        self.observation_space = spaces.Dict(
            {
                "direction": spaces.Discrete(4),
                "grid": spaces.Box(np.zeros_like(high), high, (7, 7, 3), np.int64),
                "mission": spaces.Text(
                    max_length=BABYAI_MISSION_MAX_LEN, charset=BABYAI_MISSION_CHARSET
                ),
            }
        )

    @staticmethod
    def view(env) -> dict:
        """minigrid's `MiniGridEnv.gen_obs` of `env` (its observation: the encoded view, the
        direction, the mission), computed without its Grid copies.

        minigrid slices the view out of the grid as a new Grid, rotates it with one more Grid per
        quarter turn, runs its visibility pass over that and encodes it: ~118 us of a ~133 us env
        step, all in Python. Here each view cell reads its grid cell directly (view cell (u, v), u
        across and v from the far row to the agent's, lies at T + u * right - v * forward, T the far
        left corner), and the same visibility rule and encoding run over plain lists: identical
        arrays at every step (`test_babyai_view_is_minigrids` plays every level), ~3.5x faster
        (benchmarks/RESULTS.md, "BabyAI's view")."""
        outside, empty = _babyai_constants()
        n, half = env.agent_view_size, env.agent_view_size // 2
        (ax, ay), (dx, dy) = map(int, env.agent_pos), map(int, env.dir_vec)  # numpy ints are slow
        rx, ry = -dy, dx  # the agent's right
        tx, ty = ax + dx * (n - 1) - rx * half, ay + dy * (n - 1) - ry * half
        width, height, grid = env.grid.width, env.grid.height, env.grid.grid
        cells = []  # cells[u * n + v]: the object there, None when empty, a wall past the edge
        for u in range(n):
            x0, y0 = tx + u * rx, ty + u * ry
            for v in range(n):
                x, y = x0 - v * dx, y0 - v * dy
                inside = 0 <= x < width and 0 <= y < height
                cells.append(grid[y * width + x] if inside else outside)
        if env.see_through_walls:
            seen = [True] * (n * n)
        else:  # minigrid's Grid.process_vis: light spreads from the agent, stopped by opaque cells
            seen = [False] * (n * n)
            seen[half * n + n - 1] = True
            opaque = [c is not None and not c.see_behind() for c in cells]
            for v in range(n - 1, -1, -1):
                for u in range(n - 1):  # rightwards
                    if seen[u * n + v] and not opaque[u * n + v]:
                        seen[(u + 1) * n + v] = True
                        if v > 0:
                            seen[(u + 1) * n + v - 1] = seen[u * n + v - 1] = True
                for u in range(n - 1, 0, -1):  # leftwards
                    if seen[u * n + v] and not opaque[u * n + v]:
                        seen[(u - 1) * n + v] = True
                        if v > 0:
                            seen[(u - 1) * n + v - 1] = seen[u * n + v - 1] = True
        cells[half * n + n - 1] = env.carrying  # the agent sees what it carries where it stands
        codes = [(0, 0, 0) if not s else empty if c is None else c.encode()
                 for c, s in zip(cells, seen, strict=True)]  # fmt: skip
        image = np.array(codes, dtype=np.uint8).reshape(n, n, 3)
        return {"image": image, "direction": env.agent_dir, "mission": env.mission}

    def reset(self, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):
            return super().reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["success"] = bool(terminated and reward > 0)  # BabyAI rewards only success
        return obs, reward, terminated, truncated, info

    def observation(self, obs: dict) -> dict:
        return {
            "direction": int(obs["direction"]),
            "grid": np.asarray(obs["image"], dtype=np.int64),
            "mission": obs["mission"],
        }


@functools.cache
def _babyai_constants() -> tuple:
    """(a wall, the code of an empty cell): what minigrid's view holds past the grid's edge."""
    from minigrid.core.constants import OBJECT_TO_IDX
    from minigrid.core.world_object import Wall

    return Wall(), (OBJECT_TO_IDX["empty"], 0, 0)


class MetaWorldEpisode(gym.Wrapper):
    """Deterministic per-seed Meta-World episodes, each from its own start state, that stop
    shortly after success.

    `reset(seed=s)` draws the goal and object placement from the generator seeded with `s`,
    over the task's whole range (`_random_reset_space`, the range MT1's tasks are drawn from):
    the same seed gives the same episode, and another seed another start state. MT1 itself
    offers only its 50 fixed variations, so with it 200 demonstrations hold at most 50
    different episodes, and an evaluation seed no demonstration used would still start where
    one did (held-out seeds would not be held-out start states: docs/evaluation.md). Scripted
    episodes never terminate on their own; we truncate `steps_after_success` steps after the
    first success so that demonstrations are short (500 steps x 44 tokens would dwarf a small
    model's context) yet still show the hold.
    """

    def __init__(self, env: gym.Env, steps_after_success: int = 10):
        super().__init__(env)
        self.steps_after_success = steps_after_success
        self._since_success: int | None = None
        # One of MT1's tasks sets what its variations share (the observation's layout); then
        # the task wrapper stops picking one at each reset, and the env draws its own goal and
        # object placement from its seeded generator (metaworld's `seeded_rand_vec`).
        base = env.unwrapped
        base.set_task(env.get_wrapper_attr("tasks")[0])
        env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        base._freeze_rand_vec, base.seeded_rand_vec = False, True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        import mujoco

        self._since_success = None
        base = self.env.unwrapped
        if seed is not None:
            # SawyerXYZEnv.reset ignores its seed; its own seed() reseeds the generator the
            # goal and object placement are drawn from.
            base.seed(seed)
        # reset_model only re-places objects and lets the arm settle from where it was:
        # clearing the physics state first makes the episode a function of the seed alone.
        mujoco.mj_resetData(base.model, base.data)
        return self.env.reset(options=options)

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._since_success is None and info.get("success", 0.0) > 0:
            self._since_success = 0
        elif self._since_success is not None:
            self._since_success += 1
        if self._since_success is not None and self._since_success >= self.steps_after_success:
            truncated = True
        return obs, float(reward), terminated, truncated, info


META_WORLD_PIXEL_SIZE = 64
META_WORLD_PROPRIO = 4  # hand xyz and gripper opening: the first 4 state floats


class MetaWorldPixels(gym.ObservationWrapper):
    """Dict(image: uint8 64x64x3 from the "corner" camera, proprio: hand xyz + gripper).

    Shadows and reflections are switched off (5x faster software rendering); the corner
    camera renders upside down, so the image is flipped vertically. The full state stays
    readable as `self.state` for the scripted expert (which needs object positions).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        size = META_WORLD_PIXEL_SIZE
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (META_WORLD_PROPRIO,), np.float32),
            }
        )
        self.state: np.ndarray | None = None
        self._flags_set = False

    def _render(self) -> np.ndarray:
        import mujoco

        renderer = self.env.unwrapped.mujoco_renderer
        if not self._flags_set:
            viewer = renderer._get_viewer("rgb_array")
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._flags_set = True
        return np.ascontiguousarray(renderer.render("rgb_array")[::-1])

    def observation(self, obs: np.ndarray) -> dict:
        self.state = np.asarray(obs, np.float32)
        return {"image": self._render(), "proprio": self.state[:META_WORLD_PROPRIO].copy()}


# --------------------------------------------------------------------------- BabyAI

# Levels whose bot fails or loops (docs/environments.md): KeyInBox and PutNext*Carrying raise,
# OpenDoorsOrderN{2,4}Debug succeed 7/20 and 2/20.
BABYAI_SKIP = {
    "KeyInBox",
    "PutNextS5N2Carrying",
    "PutNextS6N3Carrying",
    "PutNextS7N4Carrying",
    "OpenDoorsOrderN2Debug",
    "OpenDoorsOrderN4Debug",
}


def babyai_levels() -> dict[str, str]:
    """Level name -> gymnasium id of every BabyAI level its bot solves (`GoToLocal` ->
    `BabyAI-GoToLocal-v0`), in gymnasium's registration order."""
    import minigrid  # noqa: F401  (registers the BabyAI ids)

    levels = {}
    for env_id in [k for k in gym.registry if k.startswith("BabyAI-")]:
        level = env_id.removeprefix("BabyAI-").rsplit("-v", 1)[0]
        if level not in BABYAI_SKIP:
            levels[level] = env_id
    return levels


def make_babyai(env_id: str, render_mode: str | None = None) -> gym.Env:
    """A BabyAI level with the Dict(direction, grid, mission) observation."""
    import minigrid  # noqa: F401  (registers the BabyAI ids)

    return BabyAIObs(gym.make(env_id, render_mode=render_mode, disable_env_checker=True))


def babyai_max_steps(env_id: str, probes: int = 3) -> int:
    """The largest step limit minigrid sets over a few seeds.

    minigrid sets max_steps at reset from the mission (more sub-goals, more steps) and
    truncates by itself; this cap (~2 ms a probe) is the task's `max_episode_steps`, which
    collection, the random-policy references and evaluation all stop at. Where a seed past the
    probes gets a larger limit from minigrid, the cap is the tighter one (SynthS5R2: 150
    against minigrid's 300 on 9 of the first 50 evaluation seeds; BossLevelNoUnlock, MiniBossLevel
    on 1 in 50 and 30); expert, random and agent share it, so scores stay comparable."""
    env = gym.make(env_id, disable_env_checker=True)
    steps = 0
    for seed in range(probes):
        with contextlib.redirect_stdout(io.StringIO()):
            env.reset(seed=seed)
        steps = max(steps, int(env.unwrapped.max_steps))
    env.close()
    return steps


# --------------------------------------------------------------------------- Meta-World

META_WORLD_PIXEL_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "push-v3")


def metaworld_policies() -> dict[str, str]:
    """Env name -> name of its scripted policy class, for every Meta-World v3 env, sorted."""
    from metaworld.policies import ENV_POLICY_MAP

    return {name: ENV_POLICY_MAP[name].__name__ for name in sorted(ENV_POLICY_MAP)}


@functools.cache
def metaworld_goals(env_name: str) -> tuple:
    """MT1's 50 goal variations of `env_name` (its tasks, seed 0), drawn once per machine.

    Drawing them resets a fresh env 50 times: ~0.7 s of the ~0.9 s that
    `gym.make("Meta-World/MT1")` takes, which evaluation and collection paid in every process
    that built the task (benchmarks/RESULTS.md, "Meta-World envs built in a fifth of the time").
    The draw is a function of the package versions alone, so it is kept on disk under them
    (`files.cache_dir()`/metaworld-goals, written atomically) and once per process in memory. A
    file that does not read back as this task's goals is drawn again and replaced."""
    import pickle
    from importlib.metadata import version

    import metaworld

    versions = "-".join(f"{p}{version(p)}" for p in ("metaworld", "mujoco", "numpy"))
    path = cache_dir() / "metaworld-goals" / f"{env_name}-{versions}.pkl"
    try:
        goals = pickle.loads(path.read_bytes())
        if (
            isinstance(goals, tuple)
            and len(goals) == 50
            and all(isinstance(g, metaworld.Task) and g.env_name == env_name for g in goals)
        ):
            return goals
    except FileNotFoundError:
        pass
    except Exception as e:  # damaged (a crash cannot leave half a file: it is written atomically)
        print(f"{path}: unreadable ({type(e).__name__}), drawing the goals again")
    goals = tuple(metaworld.MT1(env_name, seed=0).train_tasks)  # ValueError: no such v3 env
    try:
        atomic_write_bytes(path, pickle.dumps(goals))
    except OSError as e:  # a read-only cache costs the draw, nothing else
        print(f"{path}: not written ({e}); the goals are drawn again in each process")
    return goals


def make_metaworld(env_name: str, pixels: bool, render_mode: str | None = None) -> gym.Env:
    """One Meta-World MT1 env (`push-v3`): seeded episodes that stop 10 steps after success,
    observed as the unbounded state or, with `pixels`, as Dict(image, proprio).

    The env `gym.make("Meta-World/MT1", env_name=env_name, seed=0)` makes (what
    `metaworld.make_mt_envs` builds, then gym.make's order check), with the goals drawn once
    per process (`metaworld_goals`). `_init_each_env` is private to the pinned metaworld 3.1.1;
    tests/test_tasks.py checks that the two play the same episodes."""
    import metaworld

    kwargs: dict[str, Any] = {}
    if pixels or render_mode is not None:
        default_to_headless_gl()
        kwargs.update(
            render_mode="rgb_array",
            camera_name="corner",
            width=META_WORLD_PIXEL_SIZE,
            height=META_WORLD_PIXEL_SIZE,
        )
    goals = list(metaworld_goals(env_name))  # a ValueError naming a name that is no v3 env
    env: gym.Env = metaworld._init_each_env(
        env_cls=metaworld.ALL_V3_ENVIRONMENTS[env_name],
        tasks=goals,
        seed=0,
        num_tasks=1,
        use_one_hot=False,
        **kwargs,
    )
    env = MetaWorldEpisode(gym.wrappers.OrderEnforcing(env))
    return MetaWorldPixels(env) if pixels else UnboundedFloatObs(env)


def default_to_headless_gl() -> None:
    # Gymnasium's MuJoCo renderer reads MUJOCO_GL when it makes its first viewer; unset, it
    # tries GLFW first, which needs a display and, failing, leaves PyOpenGL unable to load EGL.
    # EGL renders headless out of the box (docs/environments.md) and is what the recorded pixel
    # fingerprints were made with; a backend the user chose is kept.
    os.environ.setdefault("MUJOCO_GL", "egl")


# --------------------------------------------------------------------------- classic control

CLASSIC_ENVS = (
    "CartPole-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Acrobot-v1",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
)


def make_classic(env_id: str, render_mode: str | None = None) -> gym.Env:
    """A classic-control or Box2D env with float32, unbounded observations."""
    env = gym.make(env_id, render_mode=render_mode, disable_env_checker=True)
    return UnboundedFloatObs(env)
