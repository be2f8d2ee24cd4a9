"""Reports: Markdown and HTML with figures, from one or more `opengato eval` results files.

`opengato report results/a.json [results/b.json ...] --out-dir report/` writes `report.md`,
`report.html` and PNG figures: the paper's Figure 5 curve (number of tasks whose normalised score
is at least x, for x in 0..100% of expert), the same curve per domain as a share of the domain's
tasks, per-domain bar charts of the mean normalised score with its bootstrap 95% CI, a per-task
table, the aggregates, caption metrics when present, and side-by-side columns when several
results files are given. It needs nothing but the results
files. Rollout strips: `opengato eval --record N` saves a GIF of each task's first episode
beside the results; the report shows those GIFs (copied into out_dir) when they exist.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from tyro.conf import Positional, arg

from opengato.agent.scores import aggregate_results, unscored_by_domain
from opengato.figures import Run, plot_figures
from opengato.files import atomic_write_json, atomic_write_text


@dataclass
class ReportConfig:
    """Write a Markdown/HTML report with figures from results files."""

    results: Positional[Annotated[list[str], arg(metavar="RESULTS")]]
    """Results JSON files written by `opengato eval` (several: compared side by side)."""
    out_dir: str = "report"
    """Folder for report.md, report.html and the figures."""
    names: list[str] | None = None
    """A label per results file (default: the file name without .json)."""
    title: str = "opengato evaluation"
    """Report title."""
    gifs: bool = True
    """Show the rollout GIFs recorded by `opengato eval --record N` when present."""
    as_seeds: bool = False
    """The results files are training seeds of one recipe: add a table of each task's mean +- std
    over them, and the aggregates' mean +- std (also printed)."""


Table = tuple[str, list[str], list[list[str]]]
"""(title, header, rows) of one table in the report."""


def _load(paths: list[str], names: list[str] | None) -> list[Run]:
    if not paths:
        raise SystemExit("opengato report: give at least one results file (from `opengato eval`)")
    if names is not None and len(names) != len(paths):
        raise SystemExit("opengato report: give one --names entry per results file")
    out = []
    for i, p in enumerate(paths):
        path = Path(p)
        if not path.is_file():
            raise SystemExit(f"opengato report: results file {p!r} does not exist")
        results = json.loads(path.read_text())
        overall = results.get("aggregates", {}).get("overall", {})
        if overall.get("n_tasks") and "iqm_ci_episodes" not in overall:  # written before them
            cfg = results.get("config", {})
            results["aggregates"] = aggregate_results(
                results["tasks"], cfg.get("bootstrap", 2000), cfg.get("start_seed", 0)
            )
        out.append(Run(names[i] if names else path.stem, results, path))
    return out


def _share(count: int, n: int) -> str:
    return f"{count} ({100 * count / n:.0f}%)" if n else str(count)


def _shares(a: dict, unscored: int) -> tuple[str, str]:
    """An aggregate's tasks at 50% and at 80% of expert, each with its share of every task:
    the scored ones and the `unscored` (failed or unfinished: below every threshold)."""
    every = a.get("n_tasks", 0) + unscored
    return _share(a.get("tasks_ge_50", 0), every), _share(a.get("tasks_ge_80", 0), every)


def domain_table(results: dict) -> str:
    """Per domain and over all tasks: how many tasks, the mean, median and IQM normalised score,
    and how many tasks reach 50% and 80% of expert (with their share), as aligned text. Tasks
    that failed or that a time limit left unfinished have no score: when there are any, a last
    column counts them, and the shares are of every task, theirs included (they did not reach
    50% of expert), while the mean, median and IQM are of the scored ones."""
    aggs = results.get("aggregates", {})
    unscored = unscored_by_domain(results)
    scored = {d: a for d, a in aggs.get("domains", {}).items() if a.get("n_tasks")}
    rows = [(d, scored.get(d, {}), unscored.get(d, 0)) for d in sorted({*scored, *unscored})]
    if aggs.get("overall", {}).get("n_tasks") or unscored:
        rows.append(("all", aggs.get("overall", {}), sum(unscored.values())))
    extra = f" {'not scored':>10}" if unscored else ""
    lines = ["per domain (normalised score, % of expert)",
             f"{'domain':<12} {'tasks':>5} {'mean':>7} {'median':>7} {'IQM':>7} "
             f"{'>=50%':>10} {'>=80%':>10}{extra}"]  # fmt: skip
    for name, a, bad in rows:
        scores = " ".join(f"{_fmt(a.get(k)):>7}" for k in ("mean", "median", "iqm"))
        shares = " ".join(f"{x:>10}" for x in _shares(a, bad))
        lines.append(f"{name:<12} {a.get('n_tasks', 0):>5} {scores} {shares}"
                     + (f" {bad:>10}" if unscored else ""))  # fmt: skip
    return "\n".join(lines)


def _fmt(x, spec: str = "{:.1f}") -> str:
    return "-" if x is None else spec.format(x)


def _ci(a: dict, key: str) -> str:
    if a.get(key) is None:
        return "-"
    lo, hi = a[f"{key}_ci"]
    episodes = a.get(f"{key}_ci_episodes")  # absent from results written before they were
    within = f" [{episodes[0]:.1f}, {episodes[1]:.1f}]" if episodes else ""
    return f"{a[key]:.1f} [{lo:.1f}, {hi:.1f}]{within}"


def _aggregate_table(runs: list[Run]) -> Table:
    """Overall and per-domain aggregates of each run, with their bootstrap CIs; the shares of
    tasks at 50% and 80% of expert count the tasks left without a score (`domain_table`)."""
    header = ["run", "scope", "tasks", "mean [CI tasks] [CI episodes]", "median [...]", "IQM [...]",
              ">=50%", ">=80%", "not scored"]  # fmt: skip
    rows = []
    for run in runs:
        aggs, unscored = run.results.get("aggregates", {}), unscored_by_domain(run.results)
        unscored["overall"] = sum(unscored.values())
        scopes = [("overall", aggs.get("overall", {}))] + list(aggs.get("domains", {}).items())
        for scope, a in scopes:
            if a.get("n_tasks"):
                bad = unscored.get(scope, 0)
                rows.append([run.name, scope, str(a["n_tasks"]), _ci(a, "mean"), _ci(a, "median"),
                             _ci(a, "iqm"), *_shares(a, bad), str(bad)])  # fmt: skip
    title = ("Aggregates (normalised score, % of expert; 95% bootstrap intervals: the first "
             "resamples the tasks, the second each task's episodes, the tasks kept)")  # fmt: skip
    return title, header, rows


def _task_cells(r: dict | None) -> list[str]:
    """A run's (return, success, norm) cells for one task."""
    if r is None or "error" in r:
        return ["-", "-", "error" if r else "-"]
    ret = (
        None if r.get("mean_return") is None else f"{r['mean_return']:.2f} ± {r['std_return']:.2f}"
    )
    return [ret or "-", _fmt(r.get("success_rate"), "{:.2f}"), _fmt(r.get("normalized_score"))]


def _task_table(runs: list[Run]) -> Table:
    """One row per task, the runs side by side."""
    tasks = sorted({t for run in runs for t in run.results["tasks"]})
    header = ["task"] + [
        f"{run.name}: {col}" for run in runs for col in ("return", "success", "norm")
    ]
    rows = [[t] + [c for run in runs for c in _task_cells(run.results["tasks"].get(t))]
            for t in tasks]  # fmt: skip
    return (
        "Per task (mean ± std return over episodes, success rate, normalised score)",
        header,
        rows,
    )


def _caption_table(runs: list[Run]) -> Table | None:
    """Caption metrics of the runs that captioned the held-out scenes (None: no run did)."""
    rows = []
    for run in runs:
        c = run.results.get("captions")
        if c and "error" not in c:
            a = c["attributes"]
            rows.append([run.name, str(c["n"]), f"{a['overall']:.3f}", f"{a['exact']:.3f}"]
                        + [f"{c[f'bleu{n}']:.3f}" for n in range(1, 5)] + [f"{c['token_f1']:.3f}"])  # fmt: skip
    header = ["run", "scenes", "attribute acc.", "exact", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
              "token F1"]  # fmt: skip
    return ("Captions of held-out scenes", header, rows) if rows else None


def _qa_table(runs: list[Run]) -> Table | None:
    """Scores of the runs' answers to the held-out questions (None: no run answered them)."""
    rows = []
    for run in runs:
        q = run.results.get("qa")
        if q and "error" not in q:
            ci = " [{:.3f}, {:.3f}]".format(*q["answer_nll_ci95"]) if "answer_nll_ci95" in q else ""
            nats, cut = q.get("answer_nll_per_char"), q.get("answers_cut")
            per_char = "-" if nats is None else f"{nats:.3f}" + (f" ({cut} cut)" if cut else "")
            rows.append([run.name, str(q["n"]), f"{q['answer_nll']:.3f}{ci}", per_char,
                         f"{q['answer_token_accuracy']:.3f}", f"{q['token_f1']:.3f}",
                         f"{q['bleu1']:.3f}", f"{q['bleu4']:.3f}"])  # fmt: skip
    header = ["run", "questions", "answer NLL (nats/token) [95% CI]", "nats/char",
              "next-token acc.", "token F1", "BLEU-1", "BLEU-4"]  # fmt: skip
    return ("Answers to held-out questions", header, rows) if rows else None


def _qa_comparison_table(runs: list[Run]) -> Table | None:
    """Each later run's answers against the first run's, question by question
    (`language.compare_answers`): per token where that pairs as many questions as per
    character does (the same text model), else per answer character (another text model, or
    another Python's). None unless two runs answered the same held-out questions."""
    from opengato.agent.language import compare_answers

    first, rows = runs[0].results.get("qa") or {}, []
    for run in runs[1:]:
        other = run.results.get("qa") or {}
        c = compare_answers(first, other)
        by_char = compare_answers(first, other, per="char")
        if by_char and (not c or by_char["questions"] > c["questions"]):
            c = by_char
        if c:
            lo, hi = c["nll_difference_ci95"]
            rows.append([run.name, f"{c['questions']} ({c['left_out']} left out)", c["per"],
                         f"{c['base_nll']:.3f}", f"{c['other_nll']:.3f}",
                         f"{c['nll_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                         f"{c['other_lower']} of {c['questions']}"])  # fmt: skip
    header = ["run", "questions paired", "nats per", f"{runs[0].name}: NLL", "run: NLL",
              "difference [95% CI]", "questions with lower NLL"]  # fmt: skip
    title = (f"Answers against {runs[0].name}'s, question by question (answer NLL; below 0 is "
             "better; measurable where the CI excludes 0)")  # fmt: skip
    return (title, header, rows) if rows else None


def _tables(runs: list[Run]) -> list[Table]:
    """(title, header, rows) of each table in the report."""
    tables = [_aggregate_table(runs), _task_table(runs), _caption_table(runs), _qa_table(runs),
              _qa_comparison_table(runs)]  # fmt: skip
    return [t for t in tables if t is not None]


def _mean_std(values: list[float], fmt: str = "{:.1f}") -> str:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not len(v):
        return "-"
    return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1) if len(v) > 1 else 0.0)}"


def seed_table(runs: list[Run]) -> Table:
    """(title, header, rows): per task, the normalised score and success rate as mean +- std
    (sample std) over the runs (training seeds of one recipe) that scored it, and how many
    seeds reach 50% of expert, of all (a seed that did not score the task counts below, and is
    named); then the aggregates likewise."""
    tasks = sorted({t for run in runs for t in run.results["tasks"]})
    header = ["task", "normalised score", "success rate", "seeds >= 50%", "per seed"]
    rows, n50 = [], 0  # n50: tasks whose mean over the seeds is >= 50
    for t in tasks:
        rs = [run.results["tasks"].get(t) or {} for run in runs]
        norm = [r.get("normalized_score") for r in rs]
        ok = [x for x in norm if x is not None]
        reach = f"{sum(x >= 50.0 for x in ok)} of {len(norm)}" + (
            f" ({len(norm) - len(ok)} not scored)" if len(ok) < len(norm) else "")  # fmt: skip
        rows.append([t, _mean_std(norm), _mean_std([r.get("success_rate") for r in rs], "{:.2f}"),
                     reach, _per_seed(norm)])  # fmt: skip
        if ok and np.mean(ok) >= 50.0:
            n50 += 1
    overall = [run.results.get("aggregates", {}).get("overall", {}) for run in runs]
    for key, label in (("tasks_ge_50", "tasks >= 50% of expert"),
                       ("tasks_ge_80", "tasks >= 80% of expert"), ("iqm", "IQM"),
                       ("mean", "mean"), ("median", "median")):  # fmt: skip
        vals = [a.get(key) for a in overall]
        rows.append([f"**{label}**", _mean_std(vals), "", "", _per_seed(vals)])
    rows.append(["**tasks whose mean over seeds >= 50%**", str(n50), "", "", ""])
    title = f"Across {len(runs)} training seeds (mean ± std; {', '.join(r.name for r in runs)})"
    return title, header, rows


def _per_seed(values: list[float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:.1f}" for v in values)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance(runs: list[Run]) -> list[str]:
    """One line per run saying what it evaluated and how, then its warnings."""
    lines = []
    for name, res, path in runs:
        ck = res.get("checkpoint", {})
        cfg = res.get("config", {})
        held_out = (res.get("seeds") or {}).get("held_out")
        seeds = {True: "held-out seeds", False: "SEEN seeds (not held out)",
                 None: "seeds not checked against the demonstrations"}[held_out]  # fmt: skip
        repeated = sum(r.get("seen_starts") or 0 for r in res["tasks"].values())
        if repeated:  # held-out seeds that a level with few layouts maps to a demonstrated start
            total = sum(r.get("n_episodes", 0) for r in res["tasks"].values())
            seeds += f"; {repeated} of {total} episodes began where a demonstration did"
        failed = sum(r.get("n_errors", 0) for r in res["tasks"].values())
        lines.append(
            f"{name}: `{path}`: checkpoint `{ck.get('path')}` (sha256 {str(ck.get('sha256'))[:12]}), "
            f"{cfg.get('episodes')} episodes/task from seed {cfg.get('start_seed')} ({seeds}), "
            f"prompts {_prompting(cfg)}, sampling {cfg.get('sample')}, "
            f"{failed} failed episodes, commit {str(res.get('git_commit'))[:10]}, "
            f"finished {res.get('finished', 'no (partial)')}"
        )
        lines += [f"WARNING ({name}): {w}" for w in res.get("warnings", [])]
    return lines


def _prompting(cfg: dict) -> str:
    if not cfg.get("prompt", True):
        return "none"
    n = cfg.get("prompt_tokens")
    size = f"up to {n} tokens" if n else "up to the training prompt length"
    return f"the {cfg.get('prompt_from', 'start')} of a demonstration, {size}"


def _gifs(runs: list[Run], out_dir: Path) -> list[tuple[str, str]]:
    """(caption, file name in out_dir) of the recorded rollout GIFs, copied into out_dir."""
    found = []
    for name, res, path in runs:
        for t, r in sorted(res["tasks"].items()):
            src = path.parent / r["gif"] if r.get("gif") else None
            if src is not None and src.is_file():
                dst = f"rollout_{name}_{t.replace('/', '__')}.gif"
                shutil.copyfile(src, out_dir / dst)
                found.append((f"{name}: {t}", dst))
    return found


FIGURES = [("Figure 5: tasks at or above each fraction of expert", "figure5.png"),
           ("Figure 5 per domain: share of each domain's tasks at or above each fraction of expert",
            "figure5_domains.png"),
           ("Mean normalised score per domain (95% bootstrap CI)", "domains.png")]  # fmt: skip
"""(title, file) of the figures every report has."""
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")  # fmt: skip


def _markdown(title: str, provenance: list[str], tables: list[Table], gifs: list) -> str:
    md = [f"# {title}", ""] + [f"- {p}" for p in provenance] + [""]
    for caption, file in FIGURES:
        md += [f"## {caption}", "", f"![{caption}]({file})", ""]
    for caption, header, rows in tables:
        md += [f"## {caption}", "", _markdown_table(header, rows), ""]
    if gifs:
        md += ["## Rollouts", ""] + [f"![{c}]({f})" for c, f in gifs] + [""]
    return "\n".join(md)


def _html(title: str, provenance: list[str], tables: list[Table], gifs: list) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>"]  # fmt: skip
    parts += [f"<li>{html.escape(p)}</li>" for p in provenance] + ["</ul>"]
    for caption, file in FIGURES:
        parts += [f"<h2>{html.escape(caption)}</h2><img src='{file}' alt='{html.escape(caption)}'>"]
    for caption, header, rows in tables:
        parts += [f"<h2>{html.escape(caption)}</h2>", _html_table(header, rows)]
    if gifs:
        parts += ["<h2>Rollouts</h2>"]
        parts += [
            f"<figure><img src='{f}'><figcaption>{html.escape(c)}</figcaption></figure>"
            for c, f in gifs
        ]
    parts += ["</body></html>"]
    return "\n".join(parts)


def run_report(cfg: ReportConfig) -> Path:
    """`opengato report`: write report.md and report.html (with PNGs) into cfg.out_dir."""
    runs = _load(cfg.results, cfg.names)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_figures(runs, out)
    tables = _tables(runs)
    if cfg.as_seeds:
        tables.insert(0, seed_table(runs))
        print(f"{tables[0][0]}\n\n{_markdown_table(*tables[0][1:])}\n")
    gifs = _gifs(runs, out) if cfg.gifs else []
    provenance = _provenance(runs)
    atomic_write_text(out / "report.md", _markdown(cfg.title, provenance, tables, gifs))
    atomic_write_text(out / "report.html", _html(cfg.title, provenance, tables, gifs))
    atomic_write_json(out / "report_config.json", asdict(cfg))
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return out
