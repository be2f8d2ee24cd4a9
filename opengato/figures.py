"""The report's figures (PNG, matplotlib): the paper's Figure 5 curve, the same per domain, and
the per-domain mean normalised score with its bootstrap 95% CI."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np


class Run(NamedTuple):
    """One results file of the report: its label, its contents and where it was read from."""

    name: str
    results: dict
    path: Path


THRESHOLDS = np.arange(0, 101)


def figure5_counts(scores: list[float], thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """For each threshold x, the number of tasks whose normalised score is >= x (Figure 5).

    >>> figure5_counts([10.0, 60.0, 100.0], np.array([0, 50, 100])).tolist()
    [3, 2, 1]
    """
    s = np.asarray([v for v in scores if v is not None], np.float64)
    return (s[None, :] >= np.asarray(thresholds)[:, None]).sum(1)


def _norm_scores(results: dict) -> list[float]:
    """The normalised scores of a results file's tasks that have one."""
    scores = (r.get("normalized_score") for r in results["tasks"].values())
    return [x for x in scores if x is not None]


def domain_fractions(results: dict, thresholds: np.ndarray = THRESHOLDS) -> dict[str, np.ndarray]:
    """Per domain, and over all tasks (`all`), the share of the tasks whose normalised score is
    >= each threshold (Figure 5 as fractions, comparable across domain sizes). A task that
    failed or was left unfinished counts as below every threshold (`unscored_by_domain`).

    >>> r = {"tasks": {"a/x": {"domain": "a", "normalized_score": 60.0},
    ...                "a/y": {"domain": "a", "normalized_score": 10.0}}, "unfinished": ["a/z"]}
    >>> domain_fractions(r, np.array([0, 50]))["a"].tolist()
    [0.6666666666666666, 0.3333333333333333]
    """
    from opengato.agent.scores import unscored_by_domain

    by_domain: dict[str, list[float]] = {}
    for r in results["tasks"].values():
        if r.get("normalized_score") is not None:
            by_domain.setdefault(r["domain"], []).append(r["normalized_score"])
    for domain, n in unscored_by_domain(results).items():
        by_domain.setdefault(domain, []).extend([-np.inf] * n)
    every = [s for v in by_domain.values() for s in v]
    groups = {**dict(sorted(by_domain.items())), "all": every}
    return {d: figure5_counts(v, thresholds) / len(v) for d, v in groups.items() if v}


def _plot_figure5(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        counts = figure5_counts(_norm_scores(run.results))
        ax.plot(THRESHOLDS, counts, drawstyle="steps-post", label=run.name)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("performance threshold (% of expert)")
    ax.set_ylabel("tasks at or above threshold")
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_domain_fractions(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":", "-."]
    for j, run in enumerate(runs):
        for i, (domain, frac) in enumerate(domain_fractions(run.results).items()):
            color = "black" if domain == "all" else f"C{i}"
            label = domain if len(runs) == 1 else f"{run.name}: {domain}"
            ax.plot(THRESHOLDS, 100 * frac, drawstyle="steps-post", color=color,
                    ls=styles[j % len(styles)], label=label)  # fmt: skip
    ax.set_xlabel("performance threshold (% of expert)")
    ax.set_ylabel("% of the domain's tasks at or above threshold")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    if ax.lines:  # none when the results hold no task (`opengato eval --episodes 0`)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_domains(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(
        {d for run in runs for d in run.results.get("aggregates", {}).get("domains", {})}
    )
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(domains) * len(runs)), 4))
    width = 0.8 / max(len(runs), 1)
    for j, run in enumerate(runs):
        aggs = run.results.get("aggregates", {}).get("domains", {})
        means = [aggs.get(d, {}).get("mean") for d in domains]  # 0.0 is a bar; None is none
        mean = np.array([np.nan if m is None else m for m in means], float)
        ci = [aggs.get(d, {}).get("mean_ci") or [np.nan, np.nan] for d in domains]
        err = np.abs(np.array(ci, float).T - mean) if domains else None
        x = np.arange(len(domains)) + j * width
        ax.bar(x, mean, width, yerr=err, capsize=3, label=run.name)
    ax.set_xticks(np.arange(len(domains)) + width * (len(runs) - 1) / 2, domains, rotation=20)
    ax.set_ylabel("mean normalised score (%)")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_figures(runs: list[Run], out_dir: Path) -> None:
    """Write figure5.png, figure5_domains.png and domains.png into out_dir."""
    _plot_figure5(runs, out_dir / "figure5.png")
    _plot_domain_fractions(runs, out_dir / "figure5_domains.png")
    _plot_domains(runs, out_dir / "domains.png")
