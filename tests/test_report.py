"""Reports from stored results files: files exist, figures are valid PNGs, runs compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from opengato.agent.scores import aggregate_results
from opengato.figures import figure5_counts
from opengato.report import ReportConfig, Run, run_report


def fake_results(shift: float) -> dict:
    tasks = {}
    for i, (name, domain) in enumerate(
        [
            ("classic/CartPole-v1", "classic"),
            ("classic/Pendulum-v1", "classic"),
            ("babyai/GoToRedBall", "babyai"),
            ("metaworld/reach-v3", "metaworld"),
        ]  # fmt: skip
    ):
        tasks[name] = {
            "task": name, "domain": domain, "metric": "return", "episodes": [],
            "mean_return": 10.0 * i, "std_return": 1.0, "success_rate": None,
            "normalized_score": 20.0 * i + shift, "n_errors": 0,
        }  # fmt: skip
    tasks["test/Broken"] = {"task": "test/Broken", "error": "Traceback ...\nRuntimeError: boom"}
    return {
        "config": {"episodes": 50, "start_seed": 0, "sample": "greedy"},
        "checkpoint": {"path": "runs/x", "sha256": "ab" * 32},
        "git_commit": "0123456789abcdef",
        "tasks": tasks,
        "aggregates": aggregate_results(tasks, n_boot=100),
        "captions": {
            "n": 3,
            "attributes": {"overall": 0.5, "exact": 0.25},
            "bleu1": 0.5,
            "bleu2": 0.4,
            "bleu3": 0.3,
            "bleu4": 0.2,
            "token_f1": 0.6,
        },  # fmt: skip
        "qa": {
            "n": 9,
            "answer_nll": 4.25,
            "answer_token_accuracy": 0.3,
            "token_f1": 0.2,
            "bleu1": 0.3,
            "bleu4": 0.05,
            "per_question": [  # answer NLL 4.0-5.0 nats a token, lower the higher `shift`
                {
                    "question": f"q{i}",
                    "nll": 5.0 * (4.5 + i / 4 - shift / 100),
                    "tokens": 5,
                    "f1": 0.1,
                }
                for i in range(5)
            ],
        },  # fmt: skip
    }


def test_figure5_counts():
    assert figure5_counts([10.0, 60.0, 100.0, None], np.array([0, 50, 100])).tolist() == [3, 2, 1]


def test_report_from_results_files(tmp_path):
    paths = []
    for name, shift in [("trained", 30.0), ("random", -5.0)]:
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(fake_results(shift)))
        paths.append(str(p))
    out = run_report(ReportConfig(results=paths, out_dir=str(tmp_path / "report")))
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for png in ("figure5.png", "domains.png"):
        with Image.open(out / png) as im:
            im.verify()
            assert im.format == "PNG"
        assert png in md and png in html
    assert "trained: return" in md and "random: norm" in md  # side by side
    assert "classic/CartPole-v1" in html and "BLEU-4" in md and "error" in md
    assert "Answers to held-out questions" in md and "| 4.250 | - | 0.300 |" in md  # no nats/char
    # random's answers against trained's, question by question: 0.35 nats a token worse on all 5
    assert "Answers against trained's" in md
    assert (
        "| random | 5 (0 left out) | token | 4.700 | 5.050 | +0.350 [+0.350, +0.350] | 0 of 5 |"
        in md
    )


def test_answers_of_another_text_model_compare_per_character():
    from opengato.report import _qa_comparison_table

    def run(name: str, shift: float, tokens: int) -> Run:
        res = fake_results(shift)
        for q in res["qa"]["per_question"]:  # 10 characters an answer, whole
            q.update(tokens=tokens, chars=10, answer_crc32=7, whole=True)
        return Run(name, res, Path(name))

    # the same text model: per token; another one (other token counts): per character
    _, _, [row] = _qa_comparison_table([run("a", 0.0, 5), run("b", 10.0, 5)])
    assert row[2] == "token" and row[5].startswith("-0.100")
    _, _, [row] = _qa_comparison_table([run("a", 0.0, 5), run("b", 10.0, 4)])
    assert row[1] == "5 (0 left out)" and row[2] == "char" and row[5].startswith("-0.050")


def test_seed_table_gives_mean_and_std_over_seeds(tmp_path, capsys):
    from opengato.report import seed_table

    paths = []
    for i, shift in enumerate((0.0, 10.0, 20.0)):
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps(fake_results(shift)))
        paths.append(str(p))
    runs = [Run(f"s{i}", json.loads(open(p).read()), p) for i, p in enumerate(paths)]
    title, header, rows = seed_table(runs)
    by_task = {r[0]: r for r in rows}
    # babyai/GoToRedBall scores 40, 50, 60 over the seeds: mean 50, sample std 10
    assert by_task["babyai/GoToRedBall"][1] == "50.0 ± 10.0"
    assert by_task["babyai/GoToRedBall"][3] == "2 of 3"
    assert by_task["babyai/GoToRedBall"][4] == "40.0 / 50.0 / 60.0"
    assert "3 training seeds" in title
    # tasks whose mean over seeds >= 50: GoToRedBall (50) and reach (60 + 10)
    assert rows[-1][1] == "2"
    # a seed that did not score a task counts below 50%, and is named
    del runs[2].results["tasks"]["babyai/GoToRedBall"]["normalized_score"]
    by_task = {r[0]: r for r in seed_table(runs)[2]}
    assert by_task["babyai/GoToRedBall"][3] == "1 of 3 (1 not scored)"
    assert by_task["babyai/GoToRedBall"][4] == "40.0 / 50.0 / -"
    out = run_report(ReportConfig(results=paths, out_dir=str(tmp_path / "rep"), as_seeds=True))
    assert "50.0 ± 10.0" in (out / "report.md").read_text()
    assert "Across 3 training seeds" in capsys.readouterr().out


def test_per_domain_table_and_figure5_as_fractions(tmp_path):
    """The per-domain table printed at the end of `opengato demo`/`suite` (with the share of
    tasks at 50% and 80% of expert), and Figure 5 per domain as shares of each domain's tasks."""
    from opengato.figures import domain_fractions
    from opengato.report import domain_table

    results = fake_results(30.0)  # classic 30, 50; babyai 70; metaworld 90; one task failed
    del results["tasks"]["test/Broken"]
    frac = domain_fractions(results, np.array([0, 50, 80]))
    assert list(frac) == ["babyai", "classic", "metaworld", "all"]
    assert frac["classic"].tolist() == [1.0, 0.5, 0.0]
    assert frac["all"].tolist() == [1.0, 0.75, 0.25]
    lines = domain_table(results).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == ["babyai", "classic", "metaworld", "all"]
    assert rows["classic"][1:4] == ["2", "40.0", "40.0"]
    assert rows["all"][1:3] == ["4", "60.0"] and rows["all"][5:] == ["3", "(75%)", "1", "(25%)"]
    # A failed task and one a time limit left unfinished have no score: they count among the
    # tasks below 50% (the shares, Figure 5 per domain), not in the mean.
    results = fake_results(30.0)
    results["unfinished"] = ["babyai/GoToObj"]
    rows = {line.split()[0]: line.split() for line in domain_table(results).splitlines()[2:]}
    assert "not scored" in domain_table(results).splitlines()[1]
    assert rows["babyai"][1:3] == ["1", "70.0"] and rows["babyai"][5:] == [
        "1",
        "(50%)",
        "0",
        "(0%)",
        "1",
    ]
    assert rows["test"][1:5] == ["0", "-", "-", "-"] and rows["test"][-1] == "1"
    assert rows["all"][1:3] == ["4", "60.0"] and rows["all"][5:] == [
        "3",
        "(50%)",
        "1",
        "(17%)",
        "2",
    ]
    frac = domain_fractions(results, np.array([0, 50, 80]))
    assert frac["babyai"].tolist() == [0.5, 0.5, 0.0] and frac["test"].tolist() == [0.0, 0.0, 0.0]
    p = tmp_path / "run.json"
    p.write_text(json.dumps(results))
    out = run_report(ReportConfig(results=[str(p)], out_dir=str(tmp_path / "report")))
    with Image.open(out / "figure5_domains.png") as im:
        im.verify()
    md = (out / "report.md").read_text()
    assert "figure5_domains.png" in md and "3 (50%)" in md and "not scored" in md


def test_printed_overall_line_says_how_many_tasks_it_scored():
    from opengato.agent.evaluate import format_results

    res = fake_results(0.0)  # 4 scored tasks and one that failed
    assert "overall (4 tasks scored of 5): mean 30.0," in format_results(res)
    res["unfinished"] = ["babyai/GoToObj"]  # left out by --max-minutes
    assert "overall (4 tasks scored of 6)" in format_results(res)
    del res["tasks"]["test/Broken"], res["unfinished"]
    assert "overall (4 tasks): mean 30.0," in format_results(res)


def test_references_that_left_out_failed_episodes_are_named(tmp_path):
    from opengato.agent.scores import score_warnings

    row = {"expert": 0.97, "random": 0.0, "expert_episodes": 53, "expert_failed": 47,
           "random_episodes": 100}  # fmt: skip
    scores = {"babyai/UnlockToUnlock": row, "babyai/GoToObj": dict(row, expert_failed=0)}
    scores["classic/CartPole-v1"] = {**row, "expert_episodes": 20, "expert_failed": 0}
    out = score_warnings(list(scores), scores, str(tmp_path))
    assert out == [
        "babyai/UnlockToUnlock: the expert score leaves out the 47 of its episodes that failed "
        "or timed out: it describes the seeds it finished",
        "babyai/GoToObj: the expert score rests on 53 episodes (< 100); collect again with more",
        "classic/CartPole-v1: the expert score rests on 20 episodes (< 100); collect again with "
        "more",
    ]
