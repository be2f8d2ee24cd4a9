"""`opengato collect`: expert demonstrations and reference scores of every task, then corpora.

Per task: expert episodes with seeds `seed + i` and uniformly random episodes with seeds
`seeds.RANDOM_SEED_START + seed + i`, each run in a worker process under a wall-clock limit
(data/generator.py); their means make the task's entry in the scores table (data/scores.py);
the expert episodes that pass the filter become the task's Minari dataset (data/episodes.py),
written atomically.
Evaluation uses seeds from `seeds.EVAL_SEED_START` on, which collection never reaches
(opengato/seeds.py). Episodes that time out or raise count as failures and are never written.
A task whose dataset was made by the same code with the same settings is skipped (resumable).
The corpora are built in the same worker pool, beside the episodes, and `run_collect(after=job)`
runs `job(name)` there for each dataset once it is on disk (`opengato demo` tokenises them so).
Where experts are cheap, `--episodes-per-domain babyai=500,classic=200` collects more of them
for some domains (or tasks) than `--episodes` gives the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import itertools
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opengato.data import corpora
from opengato.data.episodes import dataset_damage, dataset_id, minari_dir, read_collection_meta
from opengato.data.finishing import TaskSummary, finish_job
from opengato.data.generator import episodes_job, generator_hash
from opengato.data.random_scores import may_ship
from opengato.data.root import data_root
from opengato.data.scores import load_scores, save_scores
from opengato.seeds import COLLECT_SEED_START, EVAL_SEED_START, RANDOM_SEED_START
from opengato.tasks import Task, get_task, list_tasks, longest_first, select
from opengato.workers import worker_pool

# --------------------------------------------------------------------------- the collection


@dataclass
class CollectConfig:
    """Collect expert demonstrations, scores, text and image-caption data."""

    tasks: str = "default"
    """Comma-separated task names, globs (`babyai/*`) or suites (`classic`); `default` is a
    small demo mix (`opengato.tasks.DEFAULT_TASKS` + text and captions); `all` is everything.
    Corpora: `text/python-docs`, `text/qa`, `vision/scenes`, `vision/photos` (or `text`, `vision`)."""
    episodes: int = 100
    """Expert episodes attempted per task (before filtering); their mean is the expert score."""
    episodes_per_domain: str = ""
    """Expert episodes for some domains or tasks instead of `episodes`: `name=n` pairs, a name
    being a domain (`babyai`) or a task name or glob (`babyai/Unlock*`); a later pair overrides
    an earlier one, e.g. `babyai=500,classic=200,babyai/UnlockToUnlock=100`."""
    random_episodes: int = 100
    """Uniformly random episodes per task for the random score."""
    measure_random: bool = False
    """Run the random episodes even for tasks whose random score ships with opengato
    (`opengato/data/random_scores.json`, used only when its numbers are what these episodes
    would give: same env code and package versions, `--seed 0`, `--random-episodes 100`)."""
    seed: int = COLLECT_SEED_START
    """Expert episode i of a task uses seed `seed + i`, random episode i `500000 + seed + i`.
    `seed + episodes` must stay at or below 500000, where the random episodes' seeds start
    (evaluation's start at 1000000)."""
    data_dir: str | None = None
    """Data root; default `$OPENGATO_DATA` or `~/.opengato/data`."""
    workers: int = 2
    """Worker processes (1 runs in this process)."""
    episode_timeout_s: float = 60.0
    """Wall-clock limit per episode; an episode past it is dropped and counted."""
    overwrite: bool = False
    """Collect again even when an up-to-date dataset exists."""


def run_collect(cfg: CollectConfig, after: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Collect every requested task (resumable, parallel, atomic per task) and build the text
    and caption corpora, in one pool of `cfg.workers` processes; print a summary table.

    `after`, a picklable function of a dataset's name (a module-level one or a partial of one),
    runs in the pool for each collected task and corpus once it is on disk and current:
    `opengato demo` tokenises them so (`batches.sources.shard_job`), while other tasks are
    still being collected. When every task is current, nothing is collected and `after` does
    not run. Returns {"tasks": {name: TaskSummary dict}, "corpora": {name:
    count}, "after": {name: what after(name) returned}, "seconds": total}."""
    start = time.perf_counter()
    control, corpus_names = select(cfg.tasks)
    counts = episode_counts(cfg, control)
    _check_collect_config(cfg, counts)
    root = data_root(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, TaskSummary] = {}
    todo: list[Task] = []
    current: list[str] = []
    for name in control:
        task = get_task(name)
        if task.make_expert is None:
            summaries[name] = TaskSummary(name, status="dataset-only")
        elif not cfg.overwrite and _is_current(task, cfg, counts[name], root):
            summaries[name] = _summary_from_disk(task, root)
            current.append(name)
        else:
            todo.append(task)
    # With no episodes to run no pool starts (~1.5 s of the demo's 2-worker one): the corpora
    # build here, and `after` is left to the caller (the demo tokenises what is stale itself).
    with worker_pool(cfg.workers if todo else 1) as pool:
        side = SideJobs(pool, after if todo else None)
        if corpus_names:
            side.build_corpora(corpus_names, root)
        for name in current:
            side.ready(name)
        summaries.update(_collect_tasks(pool, side, todo, cfg, counts, root))
        tasks_done = time.perf_counter()
        side.wait()
    total = time.perf_counter() - start
    print(format_summary([summaries[n] for n in control], side.corpora, total))
    if side.results:  # how long `after` ran on past the tasks: the tail it leaves
        print(f"the last task was finished {tasks_done - start:.1f} s in; the jobs run on "
              f"each dataset as it was written ({len(side.results)}) ended "
              f"{time.perf_counter() - tasks_done:.1f} s later")  # fmt: skip
    return {
        "tasks": {n: asdict(summaries[n]) for n in control},
        "corpora": side.corpora,
        "after": side.results,
        "seconds": total,
    }


class SideJobs:
    """The jobs that run in the collection's pool beside the episodes: building the corpora
    (one job, at the start: ~6 s on one core for the suite's, the 20,000 scenes most of it),
    then `after(name)` for each dataset once it is on disk. The episode loop waits on
    `running` with its own jobs and hands each finished one to `done`."""

    def __init__(self, pool: cf.Executor, after: Callable[[str], Any] | None):
        self.pool, self.after = pool, after
        self.running: dict[cf.Future, str] = {}  # future -> dataset name, "" for the corpora
        self.corpora: dict[str, int] = {}
        self.results: dict[str, Any] = {}

    def build_corpora(self, names: list[str], root: Path) -> None:
        # One job: the builds of a call share corpora.json, so two at once would race on it.
        self.running[self.pool.submit(corpora.build, names, root)] = ""

    def ready(self, name: str) -> None:
        """Dataset `name` is on disk: run `after` on it."""
        if self.after is not None:
            self.running[self.pool.submit(self.after, name)] = name

    def done(self, future: cf.Future) -> None:
        """Take a finished job's result (raising its error); the corpora's start their own."""
        name = self.running.pop(future)
        if name:
            self.results[name] = future.result()
            return
        self.corpora = future.result()
        for corpus in self.corpora:
            self.ready(corpus)

    def wait(self) -> None:
        """Wait for every job, and for those they start."""
        while self.running:
            finished, _ = cf.wait(self.running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                self.done(future)


def episode_counts(cfg: CollectConfig, names: list[str]) -> dict[str, int]:
    """Expert episodes to attempt for each task of `names`: `cfg.episodes`, or the last pair of
    `cfg.episodes_per_domain` whose name is the task's domain or matches the task's name.

    >>> episode_counts(CollectConfig(episodes=100, episodes_per_domain="classic=200"),
    ...                ["classic/CartPole-v1", "babyai/GoToObj"])
    {'classic/CartPole-v1': 200, 'babyai/GoToObj': 100}
    """
    pairs = []
    for item in (x.strip() for x in cfg.episodes_per_domain.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            count = int(value)
        except ValueError:
            count = None
        if not sep or not key or count is None:
            raise ValueError(f"--episodes-per-domain: {item!r} is not `name=episodes`")
        if not list_tasks(key):  # a domain, a task name or a glob
            domains = sorted({get_task(n).domain for n in list_tasks()})
            raise KeyError(f"--episodes-per-domain: {key!r} names no domain and matches no task "
                           f"(domains: {', '.join(domains)})")  # fmt: skip
        pairs.append((key, count))
    counts = {}
    for name in names:
        domain, counts[name] = get_task(name).domain, cfg.episodes
        for key, count in pairs:
            if key == domain or fnmatch.fnmatchcase(name, key):
                counts[name] = count
    return counts


def _check_collect_config(cfg: CollectConfig, counts: dict[str, int]) -> None:
    """Refuse counts and seeds that would make a demonstration share a start state with an
    evaluation episode, or leave a reference score without episodes."""
    fewest, most = min(counts.values(), default=cfg.episodes), max(counts.values(), default=0)
    if min(cfg.episodes, fewest) < 1 or cfg.random_episodes < 1:
        raise ValueError(
            f"--episodes ({cfg.episodes}, per domain at least {fewest}) and --random-episodes "
            f"({cfg.random_episodes}) must be >= 1"
        )
    most = max(most, cfg.episodes)
    if cfg.seed < 0 or cfg.seed + most > RANDOM_SEED_START:
        raise ValueError(
            f"expert seeds [{cfg.seed}, {cfg.seed + most}) must lie in "
            f"[0, {RANDOM_SEED_START}): random-policy episodes start at {RANDOM_SEED_START} and "
            f"evaluation at {EVAL_SEED_START} (opengato/seeds.py)"
        )


def _is_current(task: Task, cfg: CollectConfig, episodes: int, root: Path) -> bool:
    """Whether the task's dataset on disk was collected by this generator with these settings
    and its files are intact; a damaged one is collected again (with a note saying why)."""
    meta = read_collection_meta(task.name, root)
    if not (
        meta is not None
        and meta.get("generator_hash") == generator_hash(task)
        and meta.get("episodes_requested") == episodes
        and meta.get("seed") == cfg.seed
        and meta.get("random_episodes_requested") == cfg.random_episodes
    ):
        return False
    problem = dataset_damage(minari_dir(root) / dataset_id(task.name), meta)
    if problem is not None:
        print(f"{task.name}: collecting again, the dataset on disk is damaged: {problem}")
        return False
    return True


def _summary_from_disk(task: Task, root: Path) -> TaskSummary:
    meta = read_collection_meta(task.name, root) or {}
    score = load_scores(root).get(task.name, {})
    return TaskSummary(
        task.name,
        kept=len(meta.get("seeds", [])),
        dropped=meta.get("dropped_by_filter", 0),
        failed=len(meta.get("failed", [])),
        expert_success_rate=score.get("expert_success_rate"),
        expert_score=score.get("expert"),
        random_score=score.get("random"),
        status="up to date",
    )


EPISODES_PER_JOB = 50
"""Most episodes a worker runs in one job (of one task and policy, so it builds that task's env
once for all of them); fewer when that leaves workers idle."""


def _jobs(
    todo: list[Task], cfg: CollectConfig, counts: dict[str, int], randoms: dict[str, int]
) -> list[tuple]:
    """The episodes of the tasks `todo` (`counts` expert and `randoms` random ones each) as
    worker jobs `(task, seeds, policy, timeout)`: runs of consecutive seeds of one task and
    policy, at most EPISODES_PER_JOB long and short enough that every worker gets about four;
    the tasks with the longest step limits first (`tasks.longest_first`), so that the last jobs
    are short ones and the datasets finished last are small to tokenise (`SideJobs`). Among
    tasks of one step limit (all 45 Meta-World tasks) the jobs take turns, a job of each task in
    turn: a task's jobs then start apart, and all but the first find what it made once per
    machine (Meta-World's goals, suites.metaworld_goals) instead of each making it at once."""
    total = sum(counts[t.name] + randoms[t.name] for t in todo)
    size = max(1, min(EPISODES_PER_JOB, math.ceil(total / (4 * max(cfg.workers, 1)))))
    by_name = {t.name: t for t in todo}
    per_task = []  # (step limit, the task's jobs), longest limit first
    for t in (by_name[name] for name in longest_first(list(by_name))):
        own = []
        for policy, n in (("expert", counts[t.name]), ("random", randoms[t.name])):
            start = cfg.seed + (RANDOM_SEED_START if policy == "random" else 0)
            seeds = list(range(start, start + n))
            own += [(t.name, seeds[i : i + size], policy, cfg.episode_timeout_s)
                    for i in range(0, n, size)]  # fmt: skip
        per_task.append((t.max_episode_steps, own))
    jobs = []
    for _, group in itertools.groupby(per_task, key=lambda limit_jobs: limit_jobs[0]):
        turns = itertools.zip_longest(*(own for _, own in group))
        jobs += [job for turn in turns for job in turn if job is not None]
    return jobs


def _collect_tasks(
    pool: cf.Executor, side: SideJobs, todo: list[Task], cfg: CollectConfig,
    counts: dict[str, int], root: Path,
) -> dict[str, TaskSummary]:  # fmt: skip
    """Run every episode of the tasks `todo` in the `pool`'s processes; finish each task (its
    scores, filter and dataset: data/finishing.py) in a worker too, as soon as its last episode
    is in, and tell `side` it is ready. Returns their summaries.

    A task with a shipped random score (data/random_scores.py) runs no random episodes. Whether
    the row still matches the task's code is known only once its env is hashed, which happens
    as the task finishes; the random episodes of a task whose row no longer matches run in a
    second pass."""
    rows = {t.name: None if cfg.measure_random else may_ship(t, cfg.seed, cfg.random_episodes)
            for t in todo}  # fmt: skip
    randoms = {t.name: 0 if rows[t.name] else cfg.random_episodes for t in todo}
    summaries, stale = _run_episodes(pool, side, todo, cfg, counts, randoms, root, rows)
    if stale:
        print(f"[collect] {len(stale)} shipped random scores are stale (env code or package "
              f"versions changed): measuring them", file=sys.stderr)  # fmt: skip
        again = [t for t in todo if t.name in stale]
        no_experts, randoms = dict.fromkeys(stale, 0), dict.fromkeys(stale, cfg.random_episodes)
        more, _ = _run_episodes(pool, side, again, cfg, no_experts, randoms, root,
                                dict.fromkeys(stale), expert=stale, attempted=counts)  # fmt: skip
        summaries.update(more)
    return summaries


def _run_episodes(
    pool: cf.Executor, side: SideJobs, todo: list[Task], cfg: CollectConfig,
    counts: dict[str, int], randoms: dict[str, int], root: Path, rows: dict[str, dict | None],
    expert: dict[str, list] | None = None, attempted: dict[str, int] | None = None,
) -> tuple[dict[str, TaskSummary], dict[str, list]]:  # fmt: skip
    """Run `counts` expert and `randoms` random episodes of each task of `todo` in the `pool`,
    then its `finish_job` there (with `rows[task]` as its shipped random row, and the expert
    results of `expert[task]` when given: a second pass runs only random episodes), save its
    scores.json row here and tell `side` its dataset is ready. Episode jobs are handed out a few
    at a time, so that a task's finishing waits behind at most two per worker (and `side`'s
    jobs behind as few). Returns the summaries, and the expert results of the tasks whose
    shipped row turned out stale."""
    from tqdm import tqdm

    jobs = deque(_jobs(todo, cfg, counts, randoms))
    pending = {t.name: counts[t.name] + randoms[t.name] for t in todo}
    results: dict[str, dict[str, list]] = {
        t.name: {"expert": list((expert or {}).get(t.name, [])), "random": []} for t in todo
    }
    summaries: dict[str, TaskSummary] = {}
    stale: dict[str, list] = {}
    started: dict[str, float] = {}
    running: dict[cf.Future, str] = {}  # episode jobs
    finishing: dict[cf.Future, tuple[str, list]] = {}  # finish jobs, with their expert results
    with tqdm(total=sum(pending.values()), desc="collect", unit="ep") as bar:
        while jobs or running or finishing:
            while jobs and len(running) < 2 * max(cfg.workers, 1):
                job = jobs.popleft()
                started.setdefault(job[0], time.perf_counter())
                running[pool.submit(episodes_job, job)] = job[0]
            done, _ = cf.wait([*running, *finishing, *side.running],
                              return_when=cf.FIRST_COMPLETED)  # fmt: skip
            for future in done:
                if future in side.running:
                    side.done(future)
                    continue
                if future in finishing:
                    name, expert_results = finishing.pop(future)
                    outcome = future.result()
                    if outcome is None:  # the shipped random row no longer matches
                        stale[name] = expert_results
                        continue
                    summary, entry = outcome
                    summary.seconds = time.perf_counter() - started[name]
                    save_scores(root, {name: entry})
                    summaries[name] = summary
                    side.ready(name)
                    bar.set_postfix_str(name)
                    continue
                name, done_episodes = running.pop(future), future.result()
                for _, policy, result in done_episodes:
                    results[name][policy].append(result)
                bar.update(len(done_episodes))
                pending[name] -= len(done_episodes)
                if pending[name] == 0:
                    res = results.pop(name)
                    n = (attempted or counts)[name]
                    job = (name, res, n, cfg.seed, cfg.random_episodes, root, rows[name])
                    finishing[pool.submit(finish_job, job)] = (name, res["expert"])
    return summaries, stale


def format_summary(rows: list[TaskSummary], corpora: dict[str, int], seconds: float) -> str:
    """The collection summary as a Markdown table."""

    def num(x: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if x is None else fmt.format(x)

    lines = [
        "| task | kept | dropped | failed | expert success | expert score | random score | s | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.kept} | {r.dropped} | {r.failed} | "
            f"{num(r.expert_success_rate, '{:.0%}')} | {num(r.expert_score, '{:.2f}')} | "
            f"{num(r.random_score, '{:.2f}')}{'*' * r.random_shipped} | {r.seconds:.1f} | "
            f"{r.status} |"
        )
    for name, count in corpora.items():
        lines.append(f"| {name} | {count} | | | | | | | corpus |")
    if any(r.random_shipped for r in rows):
        lines.append("\n\\* random score shipped with opengato (data/random_scores.py), "
                     "not measured again")  # fmt: skip
    lines.append(f"\ntotal {seconds:.1f} s")
    return "\n".join(lines)
