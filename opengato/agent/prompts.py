"""Prompts: the demonstrations an evaluation episode is conditioned on (docs/method.md section 5).

Each episode is prompted with one of its task's successful demonstrations, cut to a prompt's
length from its start or its end (`--prompt-from`): drawn with the episode's seed, or the one
whose first observation is nearest the episode's reset observation (`--prompt-choice nearest`,
retrieval). `Prompts` also carries the `seeds.start_key` of every demonstration's first
observation, against which each evaluation episode's start is checked (docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from opengato.agent.eval_config import EvalConfig
from opengato.seeds import start_key
from opengato.tokens.seq import TokenSeq
from opengato.tokens.spaces import flat_numbers, head, index, texts

MAX_PROMPT_EPISODES = 100
"""Demonstrations per task tokenised as prompt candidates (the first ones on disk)."""


@dataclass
class Prompts:
    """A task's prompt candidates: its successful demonstrations, tokenised and cut to a
    prompt's length (`seqs`), and the first observation of each (`starts`), by which retrieval
    (`--prompt-choice nearest`) picks one. Indexed and counted like the list of `seqs`. `seen`:
    the `seeds.start_key` of every demonstration's first observation, against which an
    evaluation episode's start is checked."""

    seqs: list[TokenSeq]
    starts: list[Any]
    seen: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> TokenSeq:
        return self.seqs[i]

    def __iter__(self) -> Iterator[TokenSeq]:
        return iter(self.seqs)


def nearest_start(space: spaces.Space, starts: list[Any], obs: Any) -> int:
    """Retrieval: the index of the start observation closest to `obs` (all of `space`). Among
    the starts whose Text leaves (a BabyAI mission) equal those of `obs`, if any do, the one at
    the least L2 distance over all their numbers (`tokens.spaces.flat_numbers`, images
    included); the first of equals."""
    want = texts(space, obs)
    same = [i for i, s in enumerate(starts) if texts(space, s) == want] or list(range(len(starts)))
    x = flat_numbers(space, obs)
    distances = [float(np.sum((flat_numbers(space, starts[i]) - x) ** 2)) for i in same]
    return same[int(np.argmin(distances))]


def choose_prompt(
    candidates: Prompts | list, seed: int, space: spaces.Space, obs: Any, choice: str = "random"
) -> TokenSeq | None:
    """An episode's prompt among its task's candidates (None if there are none): drawn with the
    episode's seed (`random`, so results do not depend on batching), or the demonstration whose
    first observation is nearest the episode's reset observation `obs` (`nearest`)."""
    if not candidates:
        return None
    if choice == "nearest" and obs is not None:
        return candidates[nearest_start(space, candidates.starts, obs)]
    return candidates[np.random.default_rng(seed).integers(len(candidates))]


def load_prompts(
    task,
    tokenizer,
    obs_space: spaces.Space,
    act_space: spaces.Space,
    data_dir: str | None,
    n_tokens: int,
    where: str = "end",
) -> Prompts:
    """Tokenised successful demonstrations of `task` (whose env has these spaces), each cut to
    its first (`where="start"`) or last (`"end"`) whole timesteps fitting in `n_tokens`
    (docs/method.md section 5), with their first observations.

    A task without demonstrations under `data_dir`, or none to prompt with, raises DatasetError
    (no silent fallback to prompt-free acting)."""
    from opengato.data.episodes import dataset_spaces, load_episodes
    from opengato.data.root import DatasetError, data_root
    from opengato.tokens.seq import head_timesteps, tail_timesteps

    if task.dataset and dataset_spaces(task.name, data_dir) != (obs_space, act_space):
        raise DatasetError(
            f"{task.name}: its Minari dataset {task.dataset} records the spaces "
            f"{dataset_spaces(task.name, data_dir)}, its env has ({obs_space}, {act_space})"
        )
    episodes = load_episodes(task.name, data_dir)
    good = [e for e in episodes if e.success] or [e for e in episodes if e.success is None]
    if not good:
        raise DatasetError(
            f"no demonstration of {task.name} to prompt with: its dataset under "
            f"{data_root(data_dir)} holds {len(episodes)} episodes, none successful. Collect "
            "it again, or evaluate without prompts (--no-prompt)"
        )
    if all(e.success is None for e in good):  # no success flag: the better half
        median = np.median([e.episode_return for e in good])
        good = [e for e in good if e.episode_return >= median]
    cut = head_timesteps if where == "start" else tail_timesteps
    seen = frozenset(start_key(obs_space, index(obs_space, e.observations, 0)) for e in episodes)
    prompts = Prompts([], [], seen)
    for e in good[:MAX_PROMPT_EPISODES]:
        seq = tokenizer.tokenize_episode(
            obs_space, act_space, head(obs_space, e.observations, len(e)), e.actions
        )
        prompts.seqs.append(cut(seq, n_tokens))
        prompts.starts.append(index(obs_space, e.observations, 0))
    return prompts


def prompt_length(cfg: EvalConfig, checkpoint_config: dict, context_len: int) -> int:
    """Tokens per prompt: `--prompt-tokens`, else the training run's prompt length (its
    `prompt_len`, default half its context), 0 (no prompt) for a run that never trained with
    prompts (`--prompt-len 0` or `--prompt-fraction 0`: acting after a prompt would put the
    model where training never did)."""
    if cfg.prompt_tokens is not None:
        return cfg.prompt_tokens
    train = checkpoint_config.get("train") or {}
    if train.get("prompt_fraction", 0.25) == 0:
        return 0
    n = train.get("prompt_len")
    return n if n is not None else train.get("context_len", context_len) // 2


def prompt_source(agent, cfg: EvalConfig) -> tuple | None:
    """The arguments of `env_prompts` after the env and task: (tokenizer, data_dir, prompt
    tokens, where), or None when episodes get no prompt (the uniform baseline, `--no-prompt`)."""
    model, tokenizer, checkpoint_config = agent
    if model is None or not cfg.prompt:
        return None
    n_tokens = prompt_length(cfg, checkpoint_config, model.cfg.context_len)
    return (tokenizer, cfg.data_dir, n_tokens, cfg.prompt_from) if n_tokens > 0 else None


def env_prompts(env, task, tokenizer, data_dir: str | None, n_tokens: int, where: str) -> Prompts:
    """`load_prompts` for the task of `env`, run where the env lives: with env workers, the
    tasks' demonstrations are read and tokenised there, in parallel with the acting."""
    return load_prompts(
        task, tokenizer, env.observation_space, env.action_space, data_dir, n_tokens, where
    )
