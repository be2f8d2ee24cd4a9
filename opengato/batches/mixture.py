"""The dataset mixture: which dataset each training sequence comes from, and the batches.

A :class:`Mixture` draws the dataset of each sequence by weight, a window from it
(``opengato.batches.windows``), and stacks the windows into a
:class:`~opengato.model.inputs.GatoBatch` (``opengato.batches.batch``). Every rank draws its
windows from :func:`step_rng` (``numpy.random.default_rng([seed, rank, step])``), so a resumed
run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from opengato.batches.batch import LossWeights, make_batch, target_weights
from opengato.batches.shards import Shard, check_fits
from opengato.batches.windows import Split, Window, WindowSampler
from opengato.model.inputs import GatoBatch

# Default weight of each *domain* (its share of sequences, split evenly among its datasets).
# Control suites get 1 each; the paper gives vision-language and text roughly 15% together.
DEFAULT_DOMAIN_WEIGHTS: dict[str, float] = {"text": 0.25, "qa": 0.1, "captions": 0.25}
DEFAULT_CONTROL_DOMAIN_WEIGHT = 1.0
_TRAIN = Split("train")


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The data generator of one rank at one step: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])


def parse_weights(spec: str | dict[str, float] | None) -> dict[str, float]:
    """``"classic=1,babyai=1,text=0.5"`` -> dict; keys are dataset names, globs or domains."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        return {k: float(v) for k, v in spec.items()}
    out = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"weights look like 'name=1.0,domain=0.5', got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = float(v)
    return out


def resolve_weights(shards: list[Shard], spec: str | dict[str, float] | None = None) -> np.ndarray:
    """Sampling probability of each shard.

    A key naming a dataset (exactly or by glob) sets that dataset's weight (its exact name before
    a glob, else the first glob listed); a key naming a domain sets the domain's total, split
    evenly among its datasets. Unset domains default to
    ``DEFAULT_DOMAIN_WEIGHTS`` (control suites: ``DEFAULT_CONTROL_DOMAIN_WEIGHT``)."""
    user = parse_weights(spec)
    domains: dict[str, int] = {}
    for s in shards:
        domains[s.domain] = domains.get(s.domain, 0) + 1
    used: set[str] = set()
    w = np.zeros(len(shards))
    for i, s in enumerate(shards):
        exact = [
            k for k in user if k == s.name or (k != s.domain and fnmatch.fnmatchcase(s.name, k))
        ]
        exact.sort(key=lambda k: k != s.name)  # its own name before a glob; globs as listed
        if exact:
            w[i] = user[exact[0]]
            used.add(exact[0])
        elif s.domain in user:
            w[i] = user[s.domain] / domains[s.domain]
            used.add(s.domain)
        else:
            total = DEFAULT_DOMAIN_WEIGHTS.get(s.domain, DEFAULT_CONTROL_DOMAIN_WEIGHT)
            w[i] = total / domains[s.domain]
    if unknown := set(user) - used:
        raise ValueError(
            f"--weights names {sorted(unknown)}, which match no dataset or domain "
            f"(datasets: {', '.join(s.name for s in shards)})"
        )
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


class Mixture:
    """Draws each sequence's dataset by weight, then a window from it."""

    def __init__(
        self,
        shards: list[Shard],
        context_len: int,
        weights: str | dict[str, float] | None = None,
        split: Split = _TRAIN,
        prompt_fraction: float = 0.25,
        prompt_end_fraction: float = 0.5,
        prompt_len: int | None = None,
        pad_id: int = 0,
        loss_weights: LossWeights | None = None,
        pack: bool = False,
    ):
        if not shards:
            raise ValueError("the mixture has no datasets")
        check_fits(shards, context_len)  # a timestep longer than the context trains on nothing
        self.shards = shards
        self.loss_weights = loss_weights or LossWeights()
        self.probs = resolve_weights(shards, weights)
        self.samplers = [
            WindowSampler(s, context_len, split, prompt_fraction, prompt_end_fraction,
                          prompt_len, pad_id, pack)
            for s in shards
        ]  # fmt: skip

    def loss_shares(self, windows: int = 64, seed: int = 0) -> np.ndarray:
        """Each dataset's expected share of a batch's loss, estimated from `windows` windows of
        each (a generator of its own: the training stream is untouched). The weights set each
        dataset's share of the windows, but the loss is a mean over all targets of the batch
        (the paper's sum), so a dataset of dense targets (text: every token) outweighs one of
        sparse targets (BabyAI: one action token in ~150). With `LossWeights.per_window` the
        shares are the windows' (of the datasets that have targets)."""
        rng = np.random.default_rng(seed)
        per_window = np.array([
            target_weights([s.sample(rng) for _ in range(windows)], self.loss_weights).sum()
            / windows
            for s in self.samplers
        ])  # fmt: skip
        share = self.probs * per_window
        return share / share.sum() if share.sum() > 0 else share

    def sample_windows(self, rng: np.random.Generator, batch_size: int) -> list[Window]:
        which = rng.choice(len(self.shards), size=batch_size, p=self.probs)
        return [self.samplers[i].sample(rng) for i in which]

    def sample_batch(
        self, rng: np.random.Generator, batch_size: int
    ) -> tuple[GatoBatch, list[Window]]:
        """A batch of ``batch_size`` windows, targets weighted by ``loss_weights``; and the
        windows."""
        windows = self.sample_windows(rng, batch_size)
        return make_batch(windows, target_weights(windows, self.loss_weights)), windows
