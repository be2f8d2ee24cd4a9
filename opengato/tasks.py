"""The task registry: task name -> environment factory, expert, domain and limits.

A task is what the rest of opengato trains and evaluates on: `babyai/GoToRedBall`,
`metaworld/push-v3`, `metaworld-pixels/push-v3`, `classic/CartPole-v1`, ... Every
environment is wrapped so that its spaces follow the conventions the tokenizer relies on:

- a `Box` of dtype uint8 and shape (H, W, 3) or (H, W, 1) is an image, and only images are;
- continuous values are float `Box`es (bounds may be infinite);
- discrete values are `Discrete`, `MultiDiscrete`, `MultiBinary` or integer `Box`es whose
  bounds really bound them, all below 1024;
- text is a `gymnasium.spaces.Text`.

The built-in suites' environments and their layouts are in `opengato.suites`, their experts
in `opengato.experts`; they are registered on first use of the registry. Adding a task takes
a few lines::

    register_task(Task(
        name="mysuite/MyEnv-v0", domain="mysuite",
        make_env=lambda render_mode=None: gym.make("MyEnv-v0", render_mode=render_mode),
        make_expert=lambda env: MyExpert(env), max_episode_steps=200, expert_name="my-expert",
    ))

or `register_gym_task("mysuite/MyEnv-v0", "MyEnv-v0", expert=...)`. A task whose data only
comes from a Minari dataset passes `make_expert=None`. Episodes are seeded the Gymnasium way,
with `env.reset(seed=...)`, so a factory takes no seed. The `opengato` command sees the tasks
of a module of yours through `--import`, `$OPENGATO_IMPORT` or an entry point (opengato.plugins,
docs/your-own-env.md).

`HELDOUT_TASKS` are built-in tasks that pretraining never sees (`check_not_heldout` refuses them
to `opengato train`, `demo` and `suite`), for few-shot fine-tuning (docs/few-shot.md).

Worker processes (`opengato.workers`) start with a copy of this process's registry, so a task
registered at run time, lambdas and all, is found by name in them too.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle
import gymnasium as gym

from opengato import builtin, plugins
from opengato.taskdef import Expert, Task

_REGISTRY: dict[str, Task] = {}
_BUILTIN_DONE = False


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task to the registry and return it; re-registering a name needs `overwrite`."""
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True)")
    if "/" not in task.name:
        raise ValueError(f"task names look like 'suite/Env', got {task.name!r}")
    _REGISTRY[task.name] = task
    return task


def register_gym_task(
    name: str,
    env_id: str,
    expert: Callable[[gym.Env], Expert] | None = None,
    *,
    max_episode_steps: int | None = None,
    success_key: str | None = None,
    expert_name: str = "",
    **env_kwargs: Any,
) -> Task:
    """Register any gymnasium env id (`MyEnv-v0`, or `mypkg.envs:MyEnv-v0` to import
    `mypkg.envs` first) as task `name` (`suite/Env`), with an optional expert.

    The env's Gymnasium spec is looked up now and kept in the task: a worker process, which
    starts without the `gym.register` calls of this one, makes the env from it."""
    spec = _gym_spec(env_id)

    def make_env(render_mode: str | None = None) -> gym.Env:
        return gym.make(spec, render_mode=render_mode, **env_kwargs)

    if max_episode_steps is None:
        max_episode_steps = spec.max_episode_steps or 1000
    return register_task(
        Task(
            name=name,
            domain=name.split("/")[0],
            make_env=make_env,
            make_expert=expert,
            max_episode_steps=max_episode_steps,
            success_key=success_key,
            expert_name=expert_name or (getattr(expert, "__name__", "") if expert else ""),
        )
    )


def _gym_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of `env_id`, importing the module of a `module:EnvId` first."""
    module, _, env_name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    return gym.spec(env_name)


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name raises KeyError listing close matches."""
    _ensure_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(
        f"unknown task {name!r}.{hint} (`opengato.tasks.list_tasks()` lists all "
        f"{len(_REGISTRY)} tasks)"
    )


def list_tasks(pattern: str | None = None) -> list[str]:
    """Task names matching a glob (`babyai/*`, `*push*`) or a suite name (`classic`), sorted."""
    _ensure_builtin()
    names = sorted(_REGISTRY)
    if pattern is None or pattern in ("*", "all"):
        return names
    if any(t.domain == pattern for t in _REGISTRY.values()):
        return [n for n in names if _REGISTRY[n].domain == pattern]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


# The corpora (opengato/data/corpora.py) by name -> (source kind, domain), and the aliases that expand
# to several of them.
CORPORA: dict[str, tuple[str, str]] = {
    "text/python-docs": ("text", "text"),
    "text/qa": ("qa", "qa"),
    "vision/scenes": ("captions", "captions"),
    "vision/photos": ("captions", "captions"),
}
CORPUS_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text/python-docs", "text/qa"),
    "qa": ("text/qa",),
    "vision": ("vision/scenes", "vision/photos"),
    "captions": ("vision/scenes", "vision/photos"),
}


def select(spec: str | list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The one `--tasks` grammar of every verb: (control task names, corpus names), order kept.

    Items, comma-separated: `all` (every task and corpus), `default` (DEFAULT_TASKS and every
    corpus), `heldout` (HELDOUT_TASKS, the tasks pretraining leaves out), a suite (`classic`), a
    glob (`babyai/*`, `text/*`), a task name, a corpus name (`text/qa`) or a corpus alias
    (`text`, `qa`, `vision`, `captions`). An item with a leading `-` removes what it selects,
    wherever it stands: `all,-heldout` is everything but the held-out tasks. An unknown name
    raises KeyError with close matches; a glob that matches nothing raises too.

    >>> select("classic/CartPole-v1,qa")
    (['classic/CartPole-v1'], ['text/qa'])
    >>> select("classic,-heldout,-classic/LunarLander*")[0]
    ['classic/Acrobot-v1', 'classic/CartPole-v1', 'classic/MountainCar-v0', 'classic/MountainCarContinuous-v0']
    >>> select(["classic,-heldout", "-classic/LunarLander*"]) == select("classic,-heldout,-classic/LunarLander*")
    True
    """
    parts = [spec] if isinstance(spec, str) else list(spec)  # a list may hold comma lists too
    items = [item for part in parts for item in part.split(",")]
    control: list[str] = []
    corpora: list[str] = []
    drop: set[str] = set()
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.startswith("-"):
            drop.update(*_select_item(item[1:].strip()))
            continue
        tasks, corp = _select_item(item)
        control.extend(t for t in tasks if t not in control)
        corpora.extend(c for c in corp if c not in corpora)
    return [t for t in control if t not in drop], [c for c in corpora if c not in drop]


def _select_item(item: str) -> tuple[list[str], list[str]]:
    """(control tasks, corpora) of one item of the `select` grammar."""
    if item == "all":
        return list_tasks(), list(CORPORA)
    if item == "default":
        return list(DEFAULT_TASKS), list(CORPORA)
    if item == "heldout":  # those registered: a trained suite's task exists once its expert ships
        _ensure_builtin()
        return [t for t in HELDOUT_TASKS if t in _REGISTRY], []
    if item in CORPUS_ALIASES:
        return [], list(CORPUS_ALIASES[item])
    if item in CORPORA:
        return [], [item]
    if any(c in item for c in "*?["):
        corp = [c for c in CORPORA if fnmatch.fnmatchcase(c, item)]
        tasks = list_tasks(item)
        if not tasks and not corp:
            raise KeyError(f"no task or corpus matches {item!r}")
        return tasks, corp
    return resolve_tasks([item]), []


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Expand comma-separated names, globs and suite names into task names (order kept).

    An unknown name raises KeyError with close matches; a glob matching nothing raises too.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if any(c in item for c in "*?[") or item in _suites():
            matched = list_tasks(item)
            if not matched:
                raise KeyError(f"no task matches {item!r}")
        else:
            matched = [get_task(item).name]
        out.extend(m for m in matched if m not in out)
    return out


def _suites() -> set[str]:
    _ensure_builtin()
    return {t.domain for t in _REGISTRY.values()}


def _ensure_builtin() -> None:
    """Register the built-in suites, then the user's (opengato.plugins), on first use (not at
    import: BabyAI's step limits are probed and Meta-World imported: most of a second)."""
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    for task in builtin.builtin_tasks():
        register_task(task)
    plugins.load_user_tasks()  # the user's own: entry points, $OPENGATO_IMPORT


# --------------------------------------------------------------------------- worker processes


def registry_snapshot() -> bytes:
    """Every registered task, built-in ones included, pickled for a worker process
    (`install_registry`). cloudpickle, which Gymnasium uses to send env factories to its
    vector-env workers, carries what cannot be imported by name (lambdas, closures, classes
    defined in a function or in `__main__`) by value."""
    _ensure_builtin()
    try:
        return cloudpickle.dumps(dict(_REGISTRY))
    except Exception:
        for name, task in _REGISTRY.items():
            try:
                cloudpickle.dumps(task)
            except Exception as e:
                raise TypeError(
                    f"task {name!r} cannot be sent to worker processes "
                    f"({type(e).__name__}: {e}); run with --workers 1"
                ) from e
        raise


def install_registry(snapshot: bytes) -> None:
    """Make this process's registry the one in `snapshot` (a worker's first step)."""
    global _BUILTIN_DONE
    tasks = pickle.loads(snapshot)
    _REGISTRY.clear()
    _REGISTRY.update(tasks)
    _BUILTIN_DONE = True


# A small mix for demos: easy levels of each suite (all solved by their experts), chosen so that
# one small model trained for minutes on 2 CPU cores reaches most of them (README).
DEFAULT_TASKS: tuple[str, ...] = (
    "babyai/GoToRedBallNoDists",
    "babyai/GoToRedBall",
    "babyai/GoToObj",
    "babyai/OpenRedDoor",
    "metaworld/reach-v3",
    "metaworld/button-press-topdown-v3",
    "metaworld/drawer-close-v3",
    "metaworld/door-open-v3",
    "classic/CartPole-v1",
    "classic/MountainCar-v0",
    "classic/Acrobot-v1",
    "classic/MountainCarContinuous-v0",
)

# Held out of pretraining by construction, for few-shot evaluation (the paper's section 5.2;
# docs/few-shot.md): `opengato train`, `demo` and `suite` refuse to train on them without
# --allow-heldout-tasks, and `opengato finetune` fine-tunes on a few of their demonstrations.
# None is in DEFAULT_TASKS. Meta-World: five manipulation tasks whose skills (a door, a box, a
# bin, an insertion) are near but not among the pretraining tasks; BabyAI: three levels (go to
# an object in a room, a near-twin of the default GoToRedBall and GoToObj: NEAR_TWINS; pick up
# by location; unlock a door); classic: the pendulum swing-up; one task of each suite with
# trained experts: DM Control's cartpole swing-up (the paper held it out too), MinAtar's Space
# Invaders (a shooter, as the paper's held-out Atari game, Assault, is) and MuJoCo's Reacher.
HELDOUT_TASKS: tuple[str, ...] = (
    "metaworld/bin-picking-v3",
    "metaworld/box-close-v3",
    "metaworld/door-lock-v3",
    "metaworld/door-unlock-v3",
    "metaworld/hand-insert-v3",
    "babyai/GoToLocal",
    "babyai/PickupLoc",
    "babyai/UnlockLocal",
    "classic/Pendulum-v1",
    "dmc/cartpole-swingup",
    "minatar/SpaceInvaders",
    "mujoco/Reacher-v5",
)


NEAR_TWINS: dict[str, tuple[str, ...]] = {
    # the same 8x8 room and mission grammar ("go to the {colour} {type}"): GoToRedBall always
    # asks for the red ball (7 distractors), GoToObj has no distractors, GoToLocalS* other sizes
    "babyai/GoToLocal": ("babyai/GoToRedBall", "babyai/GoToObj", "babyai/GoToLocalS*"),
    "babyai/UnlockLocal": ("babyai/UnlockLocalDist",),  # the same, with distractors
    "dmc/cartpole-swingup": ("dmc/cartpole-balance",),  # the same cart and pole, upright start
    "mujoco/Reacher-v5": ("dmc/reacher-easy",),  # a 2-joint arm reaching, in DM Control
}
"""Pretraining tasks (fnmatch patterns) close to a held-out task: the name guard lets them in,
and a few-shot result on the held-out task measures transfer from a near copy
(`opengato finetune` warns; docs/few-shot.md)."""


def near_twins(task: str, trained: list[str]) -> list[str]:
    """The tasks of `trained` that are near-twins of the held-out `task` (`NEAR_TWINS`)."""
    patterns = NEAR_TWINS.get(task, ())
    return [t for t in trained if any(fnmatch.fnmatchcase(t, p) for p in patterns)]


class HeldOutTaskError(ValueError):
    """Pretraining was asked to train on held-out tasks."""


def check_not_heldout(spec: str | list[str], allowed: bool = False) -> None:
    """Refuse to pretrain on the held-out tasks (HELDOUT_TASKS) that the `--tasks` spec
    selects, unless `allowed` (--allow-heldout-tasks); the error lists them."""
    held = [t for t in select(spec)[0] if t in HELDOUT_TASKS]
    if held and not allowed:
        raise HeldOutTaskError(
            f"refusing to pretrain on {len(held)} held-out task(s): {', '.join(held)}. They are "
            "kept out of pretraining so that few-shot results measure transfer "
            "(docs/few-shot.md): add `-heldout` to --tasks to leave them out (e.g. "
            "`all,-heldout`), fine-tune on them with `opengato finetune`, or pass "
            "--allow-heldout-tasks to pretrain on them anyway"
        )


def longest_first(task_names: list[str]) -> list[str]:
    """The tasks by their step limit, longest first (ties in the given order): the order
    evaluation starts them in (grouped, tasks of like length then share a group, and the tail a
    group leaves is its longest episode's) and collection hands out their episodes in (the
    short jobs of small BabyAI levels fill in at the end, and the large datasets of 1,000- and
    2,500-step tasks are tokenised while those run)."""

    def limit(name: str) -> int:
        try:
            return get_task(name).max_episode_steps
        except Exception:  # an unknown task fails when it starts, with its own message
            return 0

    return sorted(task_names, key=limit, reverse=True)


# The whole built-in suite, as an `opengato suite` run trains and evaluates on it (`--tasks`
# grammar): every state-based control task but the held-out ones (87 BabyAI levels, 45
# Meta-World tasks, 6 classic-control and Box2D tasks, and the MuJoCo, DM Control and MinAtar
# tasks whose experts ship) plus every corpus. The 4 Meta-World pixel twins are not separate
# tasks here: they repeat 4 of the state tasks (same dynamics, reward and random score) with
# 64x64 renders instead of states, which need an OpenGL context (a GPU machine without EGL runs
# with MUJOCO_GL=disable) and cost 16 image patches and a render per step.
SUITE: tuple[str, ...] = (
    "babyai", "metaworld", "classic", "mujoco", "dmc", "minatar", "-heldout", "text", "vision",
)  # fmt: skip
