"""The built-in suites as tasks: each suite of `opengato.suites` and `opengato.experts`,
which `opengato.tasks` registers on the registry's first use.

| domain | tasks | expert |
| --- | --- | --- |
| `babyai` | the minigrid BabyAI levels the bot solves | minigrid's BabyAIBot |
| `metaworld`, `metaworld-pixels` | Meta-World v3 MT50 (and 4 pixel twins) | Meta-World's scripted policies |
| `classic` | classic control and Box2D | small hand-written controllers |
| `mujoco` | Gymnasium MuJoCo v5 | SAC actors trained here |
| `dmc` | DeepMind Control Suite from state | SAC actors trained here (point_mass: a PD controller) |
| `minatar` | MinAtar's five games | PPO actors trained here |

The trained suites register only the envs whose expert weights ship, and DMC's scripted
point_mass (docs/experts.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import gymnasium as gym

from opengato import suites
from opengato.experts import dmc, minatar, mujoco
from opengato.experts.babyai import BabyAIExpert
from opengato.experts.classic import CLASSIC_EXPERTS
from opengato.experts.metaworld import MetaWorldExpert
from opengato.experts.mujoco import MujocoExpert, make_mujoco, shipped_envs
from opengato.taskdef import Task


def builtin_tasks() -> list[Task]:
    """Every built-in suite's tasks, in registration order."""
    return [
        *_classic(), *_babyai(), *_metaworld(), *_trained(),
    ]  # fmt: skip


def _classic() -> Iterator[Task]:
    for env_id in suites.CLASSIC_ENVS:
        expert_cls = CLASSIC_EXPERTS[env_id]
        yield (
            Task(
                name=f"classic/{env_id}",
                domain="classic",
                make_env=partial(suites.make_classic, env_id),
                make_expert=expert_cls,
                max_episode_steps=gym.spec(env_id).max_episode_steps,
                success_key=None,
                expert_name=expert_cls.__name__,
            )
        )


def _babyai() -> Iterator[Task]:
    for level, env_id in suites.babyai_levels().items():
        yield (
            Task(
                name=f"babyai/{level}",
                domain="babyai",
                make_env=partial(suites.make_babyai, env_id),
                make_expert=BabyAIExpert,
                max_episode_steps=suites.babyai_max_steps(env_id),
                success_key="success",
                expert_name="minigrid.BabyAIBot",
            )
        )


def _metaworld() -> Iterator[Task]:
    for env_name, policy in suites.metaworld_policies().items():
        for pixels in (False, True):
            if pixels and env_name not in suites.META_WORLD_PIXEL_TASKS:
                continue
            suite = "metaworld-pixels" if pixels else "metaworld"
            yield (
                Task(
                    name=f"{suite}/{env_name}",
                    domain=suite,
                    make_env=partial(suites.make_metaworld, env_name, pixels),
                    make_expert=MetaWorldExpert,
                    max_episode_steps=500,
                    success_key="success",
                    expert_name=f"metaworld.policies.{policy}",
                    metric="success_rate",
                    scores_from=f"metaworld/{env_name}" if pixels else None,
                )
            )


def _trained() -> Iterator[Task]:
    """The suites whose experts were trained here (opengato/experts/{mujoco,dmc,minatar}.py):
    only the envs whose weights ship become tasks."""
    suites = [
        ("mujoco", shipped_envs(), make_mujoco, MujocoExpert, mujoco.weights_path,
         lambda env_id: gym.spec(env_id).max_episode_steps),
        ("dmc", dmc.shipped_tasks(), dmc.make_dmc, dmc.DmcExpert, dmc.weights_path,
         lambda name: dmc.DMC_MAX_STEPS),
        ("minatar", minatar.shipped_games(), minatar.make_minatar, minatar.MinAtarExpert,
         minatar.weights_path, lambda game: minatar.MINATAR_MAX_STEPS),
    ]  # fmt: skip
    for domain, names, make_env, expert, weights_path, max_steps in suites:
        for name in names:
            scripted = dmc.SCRIPTED.get(name) if domain == "dmc" else None  # point_mass's
            yield Task(
                name=f"{domain}/{name}",
                domain=domain,
                make_env=partial(make_env, name),
                make_expert=scripted or expert,
                max_episode_steps=max_steps(name),
                expert_name=f"scripted: opengato/experts/dmc.py {scripted.__name__}"
                if scripted
                else f"opengato/experts/weights/{weights_path(name).name}",
                expert_weights=None if scripted else weights_path(name),
            )
