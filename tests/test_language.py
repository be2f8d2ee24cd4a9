"""Language with the control checkpoint: caption and answer metrics, captions of held-out scenes,
answers to held-out questions and their question-by-question comparison (agent/language.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opengato.agent.language import attribute_accuracy, bleu, token_f1
from opengato.model.checkpoint import save_checkpoint
from opengato.model.gato import Gato
from opengato.model.presets import make_config
from opengato.tokens.tokenizer import Tokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, checkpoint) of an untrained gato-tiny with a 64-token window."""
    root = tmp_path_factory.mktemp("language")
    tcfg = TokenizerConfig(text_vocab_size=1024)
    torch.manual_seed(0)
    mcfg = make_config("gato-tiny", Tokenizer(tcfg).vocab_size, context_len=64, dropout=0.0)
    return root, str(save_checkpoint(root / "run" / "step_1", Gato(mcfg), mcfg, tcfg, {}))


def test_caption_metrics():
    assert bleu(["a small red circle at the top left"], ["a small red circle at the top left"]) == {
        "bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0,
    }  # fmt: skip
    b = bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert b["bleu1"] == pytest.approx(5 / 6) and b["bleu2"] == pytest.approx(
        (5 / 6 * 3 / 5) ** 0.5
    )
    assert token_f1("a red ball", "a red ball") == 1.0
    truth = [[{"size": "small", "color": "red", "shape": "circle", "position": "top left"},
              {"size": "large", "color": "blue", "shape": "square", "position": "centre"}]]  # fmt: skip
    acc = attribute_accuracy(
        ["a small green circle at the top left and a large blue square in the centre"], truth
    )
    assert acc["color"] == 0.5 and acc["shape"] == 1.0 and acc["position"] == 1.0
    assert acc["overall"] == 7 / 8 and acc["exact"] == 0.0
    assert attribute_accuracy(["nothing"], truth)["overall"] == 0.0


def test_caption_evaluation(setup, monkeypatch):
    import opengato.data.corpora as corpora
    from opengato.agent.language import evaluate_captions
    from opengato.model.checkpoint import load_model

    rows = corpora.make_scenes(6, seed=0)
    items = [(np.frombuffer(r["image"], np.uint8).reshape(64, 64, 3), r["caption"],
              json.loads(r["attributes"])) for r in rows]  # fmt: skip
    # a picture drawn twice is scored once
    monkeypatch.setattr(corpora, "load_captions", lambda *a, **k: items[:1] + items)
    model, tok, _ = load_model(setup[1])
    res = evaluate_captions(model, tok, None, limit=3, max_tokens=6)
    assert res["n"] == 3 and 0.0 <= res["attributes"]["overall"] <= 1.0
    assert {"bleu1", "bleu4", "token_f1", "examples"} <= set(res)
    assert [e["truth"] for e in res["examples"]] == [c for _, c, _ in items[:3]]
    # the scores are of the captions generated for each scene's own image: the true captions
    # score 1, the same captions one scene off do not
    import opengato.agent.generation as generation

    truths, fed = [c for _, c, _ in items[:3]], []

    def answer(captions):
        def generate(model, tok, prefixes, max_tokens, batch_size):
            fed.append(prefixes)
            return list(captions)

        return generate

    monkeypatch.setattr(generation, "generate_texts", answer(truths))
    right = evaluate_captions(model, tok, None, limit=3)
    assert right["attributes"]["overall"] == 1.0 and right["token_f1"] == 1.0
    assert right["bleu4"] == pytest.approx(1.0)
    assert len(fed[0]) == 3  # each scene's own image: its patches, in order
    for prefix, (img, _, _) in zip(fed[0], items, strict=False):
        patches = prefix.patches.reshape(4, 4, 16, 16, 3).transpose(0, 2, 1, 3, 4)
        np.testing.assert_array_equal(patches.reshape(64, 64, 3), img)
    monkeypatch.setattr(generation, "generate_texts", answer(truths[1:] + truths[:1]))
    off = evaluate_captions(model, tok, None, limit=3)
    assert off["attributes"]["overall"] < 1.0 and off["token_f1"] < 1.0


def test_every_scene_caption_fits_the_caption_cap():
    """Captions are generated up to CAPTION_MAX_TOKENS: every scene caption, end-of-text
    included, must fit under the default text model, or the metrics score cut captions (the
    earlier cap of 32 cut the longest: up to 37 tokens, 41 with the text model before 9d11bd2)."""
    from opengato.agent.language import CAPTION_MAX_TOKENS
    from opengato.data.images import make_scenes

    tok = Tokenizer()
    lengths = [len(tok.tokenize_text(r["caption"]).ids) for r in make_scenes(3000)]
    assert 32 < max(lengths) <= CAPTION_MAX_TOKENS


def test_answer_evaluation_scores_held_out_pairs(setup, tmp_path):
    """The held-out pairs are answered and their references scored: the NLL and next-token
    accuracy equal those read off a plain forward's logits at the answer's tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from opengato.agent.language import answer, compare_answers, evaluate_answers
    from opengato.batches.batch import make_batch
    from opengato.batches.sources import question_tokens, tokenize_qa
    from opengato.model.checkpoint import load_model
    from opengato.tokens.seq import tail

    qa = [("What is a list?", "A mutable sequence.", "pydoc:lists", "valid"),
          ("What is a mapping?", "A mapping.", "pydoc:mapping", "valid"),
          ("What does len do?", "Return the number of items.", "builtins:len", "valid"),
          ("What is a dict?", "A mapping.", "pydoc:dict", "train"),
          ("What is a set?", "An unordered collection.", "pydoc:sets", "valid"),
          ("What is the module re for?", "Regular expression operations, and a long answer "
           "that does not fit the model's 64-token window with its question.", "stdlib:re", "valid")]  # fmt: skip
    docs = [
        ("Lists are sequences. A mutable sequence.", "pydoc:lists", "train"),
        ("Regexes.", "stdlib:re", "valid"),
    ]
    (tmp_path / "text").mkdir()
    for name, cols, rows in (("qa", ("question", "answer", "source", "split"), qa),
                             ("python-docs", ("text", "source", "split"), docs)):  # fmt: skip
        table = [dict(zip(cols, r, strict=True)) for r in rows]
        pq.write_table(pa.Table.from_pylist(table), tmp_path / "text" / f"{name}.parquet")
    model, tok, _ = load_model(setup[1])
    torch.manual_seed(0)
    with torch.no_grad():  # large weights: answers that depend on the question
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    res = evaluate_answers(model, tok, str(tmp_path), max_tokens=4)
    # in training text: "A mutable sequence." (a training document), "A mapping." (a training
    # pair's answer, asked again by another question); not "Regexes." (a held-out document)
    assert res["n"] == 5 and res["answer_in_training_text"] == 2
    nll = hits = n = 0
    for q, a, _, split in qa:
        if split != "valid":
            continue
        seq = tail(tokenize_qa(tok, q, a), model.cfg.context_len)
        with torch.no_grad():
            logp = model.eval()(make_batch([seq]))[0][0].float().log_softmax(-1)  # (T, V)
        for t in np.flatnonzero(seq.target_mask):
            nll, hits = (
                nll - float(logp[t - 1, seq.ids[t]]),
                hits + int(logp[t - 1].argmax() == seq.ids[t]),
            )
            n += 1
    assert res["answer_tokens"] == n and n > 40
    assert res["answer_nll"] == pytest.approx(nll / n, rel=1e-4)
    assert res["answer_token_accuracy"] == pytest.approx(hits / n)
    assert {"bleu1", "bleu4", "token_f1"} <= set(res) and len(res["examples"]) == 5
    assert res["examples"][0]["truth"] == "A mutable sequence."
    # answered in batches of equal-length questions ("What is a list?", "What is a set?"), each
    # answer is the one the question gets alone
    valid = [q for q, _, _, split in qa if split == "valid"]
    assert len({len(question_tokens(tok, q)) for q in valid}) < len(valid)
    alone = [answer(model, tok, q, 4) for q in valid]
    assert len(set(alone)) > 1  # else a batch that mixed questions up would pass too
    assert [e["answer"] for e in res["examples"]] == alone
    assert [e["question"] for e in res["examples"]] == valid
    per = res["per_question"]  # what a question-by-question comparison reads
    assert [q["question"] for q in per] == [q for q, _, _, split in qa if split == "valid"]
    assert sum(q["tokens"] for q in per) == n
    assert sum(q["nll"] for q in per) / n == pytest.approx(res["answer_nll"], rel=1e-6)
    lo, hi = res["answer_nll_ci95"]
    assert lo <= res["answer_nll"] <= hi and lo < hi
    # against an untrained model of the same tokenizer, question by question
    untrained = Gato(model.cfg).eval()
    other = evaluate_answers(untrained, tok, str(tmp_path), max_tokens=4)
    c = compare_answers(other, res)
    assert c["questions"] == 5 and c["left_out"] == 0
    assert c["base_nll"] == pytest.approx(other["answer_nll"], rel=1e-6)
    assert c["nll_difference"] == pytest.approx(res["answer_nll"] - other["answer_nll"], rel=1e-6)
    lo, hi = c["nll_difference_ci95"]
    assert lo <= c["nll_difference"] <= hi
    assert c["other_lower"] == sum(
        a["nll"] < b["nll"] for a, b in zip(res["per_question"], other["per_question"], strict=True)
    )
    same = compare_answers(res, res)
    assert same["nll_difference"] == 0 and same["nll_difference_ci95"] == [0, 0]
    assert same["other_lower"] == 0
    # a question scored over other tokens (another tokenizer, a cut context) does not pair up
    cut = {"per_question": [dict(q, tokens=q["tokens"] - 1) if i == 0 else q
                            for i, q in enumerate(res["per_question"])]}  # fmt: skip
    assert (
        compare_answers(res, cut)["questions"] == 4 and compare_answers(res, cut)["left_out"] == 1
    )
    assert compare_answers(res, {"per_question": []}) is None
    # per answer character: the pairs scored whole (the long one is cut by the 64-token window)
    assert res["answers_cut"] == 1 and [q["whole"] for q in per] == [True] * 4 + [False]
    chars = [len(a) for _, a, _, split in qa if split == "valid"]
    assert [q["chars"] for q in per] == chars
    assert res["answer_nll_per_char"] == pytest.approx(
        sum(q["nll"] for q in per[:4]) / sum(chars[:4]), rel=1e-6
    )
    # another text model cuts the answers into other tokens: nothing pairs per token, the whole
    # answers pair per character; a question whose answer changed (another Python) does not
    retok = {"per_question": [dict(q, tokens=q["tokens"] + 1) for q in other["per_question"]]}
    retok["per_question"][1]["answer_crc32"] += 1
    assert compare_answers(res, retok) is None
    c = compare_answers(res, retok, per="char")
    assert c["per"] == "char" and c["questions"] == 3 and c["left_out"] == 2
    kept = [0, 2, 3]
    diff = sum(other["per_question"][i]["nll"] - per[i]["nll"] for i in kept)
    assert c["nll_difference"] == pytest.approx(diff / sum(chars[i] for i in kept), rel=1e-6)
    changed = {"per_question": [dict(q, answer_crc32=q["answer_crc32"] + 1) if i == 2 else q
                                for i, q in enumerate(res["per_question"])]}  # fmt: skip
    assert compare_answers(res, changed)["questions"] == 4
    with pytest.raises(ValueError, match="per must be"):
        compare_answers(res, res, per="word")
    # `opengato eval --episodes 0`: the language scores alone, no rollouts
    from opengato.cli import main

    out = tmp_path / "qa.json"
    args = ["eval", setup[1], "--episodes", "0", "--qa", "--no-captions", "--data-dir",
            str(tmp_path), "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert results["tasks"] == {} and results["qa"]["n"] == 5
    from opengato.agent.evaluate import format_results

    assert format_results(results).startswith("answers to held-out questions: answer_nll ")
    assert main(args[:4] + ["--no-qa"] + args[5:]) != 0  # nothing left to score
    missing = evaluate_answers(model, tok, str(tmp_path / "none"))
    assert "error" in missing and "qa.parquet is missing" in missing["error"]
