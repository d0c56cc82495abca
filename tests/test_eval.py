"""The evaluation harness: metrics against hand-computed values and rouge-score, the
data loaders on the evaluation samples in tests/data and on broken files, the FastChat answer format, the
sweep's cells, and a short end-to-end run on SmolLM2 whose numbers are checked
against direct Session calls."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys

import pytest

from ffnskip.eval import data, metrics, mtbench
from ffnskip.eval.common import Cell, Settings
from ffnskip.eval.sweep import make_cells, markdown_table, rewrite_reports, run_sweep

HAVE_ROUGE = importlib.util.find_spec("rouge_score") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


# ---- metrics ----------------------------------------------------------------------
def test_distinct_and_repeated_ngrams_by_hand():
    t = [1, 2, 1, 2, 3]
    assert metrics.distinct_n(t, 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n(t, 2) == pytest.approx(3 / 4)     # (1,2) (2,1) (1,2) (2,3)
    assert metrics.repeated_ngram_rate(t, 2) == pytest.approx(1 / 4)
    assert metrics.repeated_ngram_rate([7, 7, 7, 7], 1) == pytest.approx(3 / 4)
    assert metrics.repeated_ngram_rate([7, 7, 7, 7], 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n([1, 2, 3], 4) == 0.0 and metrics.repeated_ngram_rate([1, 2, 3], 4) == 0.0
    with pytest.raises(ValueError):
        metrics.distinct_n(t, 0)


def test_agreement_metrics_by_hand():
    ref, other = [5, 6, 7, 8], [5, 6, 9, 8]
    assert metrics.identical_prefix(ref, other) == 2
    assert metrics.token_agreement(ref, other) == pytest.approx(0.75)
    assert metrics.identical_prefix(ref, ref) == 4 and metrics.token_agreement(ref, ref) == 1.0
    assert metrics.token_agreement(ref, [5]) == pytest.approx(0.25)   # missing positions disagree


def test_answer_normalisation_and_matching():
    assert metrics.normalize_answer("  The Blue-Whale!  ") == "bluewhale"
    assert metrics.normalize_answer("An apple, a day") == "apple day"
    assert metrics.exact_match("the blue whale.", ["Blue whale", "x"])
    assert not metrics.exact_match("It is the blue whale", ["blue whale"])
    assert metrics.contains_answer("It is the blue whale, of course", ["blue whale"])
    assert not metrics.contains_answer("blue whales", ["blue whale"])      # whole words only
    assert not metrics.contains_answer("anything", [""])


@pytest.mark.skipif(not HAVE_ROUGE, reason="rouge-score not installed (pip install 'ffnskip[eval]')")
def test_rouge_l_by_hand_and_against_rouge_score():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5: P = 5/5, R = 5/6, F = 10/11
    assert metrics.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert metrics.rouge_l("a b c", "d e f") == 0.0
    from rouge_score import rouge_scorer

    oracle = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("Police arrested two men on Tuesday.", "Two men were arrested by police"),
             ("The bishop has hepatitis A.", "The bishop of Fargo was diagnosed with hepatitis A in Italy")]
    for ref, pred in pairs:
        assert metrics.rouge_l(ref, pred) == pytest.approx(oracle.score(ref, pred)["rougeL"].fmeasure)


def test_missing_rouge_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)   # import fails
    monkeypatch.setattr(metrics, "_scorer", None)
    with pytest.raises(ImportError, match=r"ffnskip\[eval\]"):
        metrics.rouge_l("a", "a")


# ---- data -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_dir(data_dir):
    return data_dir / "eval"   # laid out as --data-dir expects


def test_length_buckets_follow_the_paper():
    assert [data.length_bucket(w) for w in (1, 470, 471, 789, 790, 5000)] == \
        ["small", "small", "medium", "medium", "large", "large"]


def test_cnndm_loader_and_buckets(eval_dir):
    articles = data.load_cnndm(data.data_file(eval_dir, "cnndm"))
    with open(data.data_file(eval_dir, "cnndm"), encoding="utf-8", newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(articles) == len(raw) == 100
    for a, r in zip(articles, raw):
        assert a["words"] == len(r["article"].split())
        assert a["highlights"] == r["highlights"].strip()
    assert min(a["words"] for a in articles) == 151 and max(a["words"] for a in articles) == 1677
    groups = data.by_bucket(articles)
    assert sum(len(g) for g in groups.values()) == 100 and all(groups.values())
    assert all(a["words"] <= 470 for a in groups["small"]) and all(a["words"] >= 790 for a in groups["large"])
    assert all(470 < a["words"] < 790 for a in groups["medium"])
    assert [len(g) for g in data.by_bucket(articles, 2).values()] == [2, 2, 2]


def test_freshqa_loader_filters(eval_dir):
    path = data.data_file(eval_dir, "freshqa")
    qs = data.load_freshqa(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[2]
    raw = {r[0]: dict(zip(header, r)) for r in rows[3:] if r and r[0]}
    assert 0 < len(qs) < 148   # 148 never-changing, true-premise questions; the short-answer rule drops some
    for q in qs:
        r = raw[q["id"]]
        assert r["fact_type"] == "never-changing" and r["false_premise"] == "FALSE"
        assert min(len(a.split()) for a in q["answers"]) <= data.SHORT_ANSWER_WORDS
    first = next(q for q in qs if q["question"] == "What was the first animal to orbit the Earth?")
    assert first["answers"] == ["Laika"]


def test_mtbench_and_wikitext_loaders(eval_dir):
    qs = data.load_mtbench(data.data_file(eval_dir, "mtbench"))
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    picked = mtbench.select(qs, 8)
    assert len({q["category"] for q in picked}) == 8
    text = data.load_wikitext(data.data_file(eval_dir, "wikitext_test"))
    assert "@-@" not in text and "@,@" not in text and "<unk>" in text
    assert all(not p.startswith("=") and len(p.split()) >= 40 for p in data.wikitext_paragraphs(text)[:50])


def test_loaders_reject_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        data.load_cnndm(tmp_path / "nothing.csv")
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["a"]}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"q.jsonl:2"):
        data.load_mtbench(bad)
    bad.write_text('{"question_id": "x", "turns": ["a"]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="question_id"):
        data.load_mtbench(bad)
    cnn = tmp_path / "c.csv"
    cnn.write_text("id,article\n1,text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="highlights"):
        data.load_cnndm(cnn)
    fq = tmp_path / "f.csv"
    fq.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        data.load_freshqa(fq)
    empty = tmp_path / "w.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        data.load_wikitext(empty)


# ---- FastChat answer format -----------------------------------------------------------
def test_fastchat_answer_format(tmp_path):
    rec = mtbench.answer_record(81, "m+ffn_skip@0.25", ["one", "two"], tstamp=123.5)
    assert set(rec) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert rec["question_id"] == 81 and rec["model_id"] == "m+ffn_skip@0.25" and rec["tstamp"] == 123.5
    assert rec["choices"] == [{"index": 0, "turns": ["one", "two"]}]
    assert isinstance(rec["answer_id"], str) and rec["answer_id"] != mtbench.answer_record(82, "m", ["a"])["answer_id"]
    mtbench.write_answers(tmp_path / "a" / "m.jsonl", [rec, mtbench.answer_record(82, "m", ["é"])])
    lines = (tmp_path / "a" / "m.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(l)["question_id"] for l in lines] == [81, 82]


# ---- cells ------------------------------------------------------------------------
FAKE_PROFILE = {"max_ppl_increase": 0.1, "config": {"policy": "ffn_skip", "threshold": 0.97, "max_skip": 2},
                "layers_alternative": {"layers": [20, 12]}}


def test_cells_of_a_sweep():
    ranking = list(range(29, -1, -1))   # layer 29 cheapest
    cells = make_cells(["ffn_skip", "shortgpt", "random", "cheapest", "budget"], [0, 0.1, 0.25], n_layer=30,
                       warmup=8, ranking=ranking, budget_profiles=[FAKE_PROFILE])
    keys = [c.key for c in cells]
    assert keys[0] == "full"
    assert keys[1:] == ["ffn_skip@0.1", "ffn_skip@0.25", "random@0.1", "random@0.25", "budget_ffn_skip@0.1",
                        "shortgpt@0.1", "shortgpt@0.25", "cheapest@0.1", "cheapest@0.25", "budget_layers@0.1"]
    by = {c.key: c for c in cells}
    assert by["shortgpt@0.25"].config == {"policy": "shortgpt", "layers": [22, 23, 24, 25, 26, 27, 28, 29], "warmup": 8}
    assert by["cheapest@0.1"].config["policy"] == "layers" and by["cheapest@0.1"].config["layers"] == [27, 28, 29]
    assert by["random@0.25"].config == {"policy": "random", "target_ratio": 0.25, "warmup": 8, "seed": 0}
    assert by["budget_ffn_skip@0.1"].config["threshold"] == 0.97 and by["budget_ffn_skip@0.1"].config["warmup"] == 8
    assert by["budget_layers@0.1"].config["layers"] == [20, 12]
    gated = {c.key: c for c in make_cells(["cheapest_gate"], [0, 0.1, 0.4], n_layer=30, warmup=8, ranking=ranking)}
    assert sorted(gated) == ["cheapest_gate@0.1", "cheapest_gate@0.4", "full"]
    c = gated["cheapest_gate@0.1"].config
    # max_skip = round(0.1 x 30 x 6/5) = 4: the gate may leave out the 8 cheapest non-cold FFNs (24 .. 17)
    assert c["policy"] == "ffn_skip" and c["target_ratio"] == 0.1 and c["layers"] == list(range(17, 25))
    assert gated["cheapest_gate@0.4"].config["layers"] == list(range(5, 25))   # the whole non-cold region
    zero = make_cells(["random", "shortgpt"], [0], n_layer=30, warmup=0, ranking=ranking, check_zero=True)
    assert [c.key for c in zero] == ["full", "random@0"]
    with pytest.raises(ValueError, match="unknown policy"):
        make_cells(["nope"], [0.1], n_layer=30, warmup=0)
    with pytest.raises(ValueError, match="ranking"):
        make_cells(["cheapest"], [0.1], n_layer=30, warmup=0)


def test_skipdecode_span_covers_the_call():
    c = Cell("skipdecode", 0.2, {"policy": "skipdecode", "target_ratio": 0.2, "warmup": 8})
    assert c.spec(40)["skipdecode_span"] == 32
    assert c.spec(4)["skipdecode_span"] == 1
    assert "skipdecode_span" not in Cell("random", 0.2, {"policy": "random"}).spec(40)


def test_limit_caps_every_task():
    s = Settings().limited(1)
    assert (s.agreement_prompts, s.qa_questions, s.summarize_per_bucket, s.mtbench_questions,
            s.collapse_generations) == (1, 1, 1, 1, 1)
    assert s.ppl_tokens == s.ppl_window


def test_cli_eval_reports_a_missing_data_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ffnskip", "eval", str(tmp_path / "m.gguf"), "--tasks", "qa",
                        "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--no-plots", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "FreshQA" in r.stderr and "FreshQA_v12182024.csv" in r.stderr


def test_cli_eval_rejects_bad_ratios(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ffnskip", "eval", "m.gguf", "--ratios", "0,250", "--no-plots"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "outside [0, 1]" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ffnskip", "eval", "m.gguf", "--set", "qa_question=3", "--no-plots"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "qa_questions" in r.stderr


# ---- end to end on SmolLM2 --------------------------------------------------------------
def test_end_to_end_limited_run(smollm2_q4_1, eval_dir, tmp_path):
    from ffnskip import Session
    from ffnskip.eval import perplexity, qa

    tasks = ["ppl", "qa", "collapse"] + (["agreement", "summarize", "mtbench"] if HAVE_ROUGE else [])
    settings = Settings(ppl_window=96, agreement_tokens=24, qa_max_tokens=8, summarize_tokens=12,
                        summarize_max_article_tokens=96, mtbench_tokens=12, collapse_tokens=32, n_ctx=512)
    out = tmp_path / "out"
    res = run_sweep(smollm2_q4_1, eval_dir, out, tasks=tasks, policies=["random"], ratios=[0, 0.3],
                    limit=1, threads=2, settings=settings, check_zero=True, plots=HAVE_MPL, progress=False)
    keys = [c["key"] for c in res["cells"]]
    assert keys == ["full", "random@0", "random@0.3"]
    r = res["results"]

    # perplexity of the full model = Session.score over the same windows
    s = Session(smollm2_q4_1, n_ctx=512, n_threads=2)
    wins = perplexity.prepare(s, data.load_wikitext(data.data_file(eval_dir, "wikitext_test")),
                              settings.limited(1))
    nll = sum(s.score(p, c, skip="full")[0] for p, c in wins)
    n = sum(len(c) for _, c in wins)
    assert n == 96
    assert r["ppl"]["full"]["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-9)
    assert 5 < r["ppl"]["full"]["ppl"] < 60
    # ratio 0 of any policy is the full model; a positive ratio skips and costs perplexity
    for key in ("random@0",):
        assert r["ppl"][key]["ppl"] == r["ppl"]["full"]["ppl"]
        assert res["summary"][key]["skip_ratio"] == 0.0
    assert r["ppl"]["random@0.3"]["ppl"] > r["ppl"]["full"]["ppl"]
    # random drops FFNs with probability 0.3 / (5/6) on non-refresh steps: 0.3 after the warm-up
    assert r["ppl"]["random@0.3"]["skip"]["skip_ratio_after_warmup"] == pytest.approx(0.3, abs=0.05)

    # the QA prediction of the full model is the documented prompt's greedy answer
    q = data.load_freshqa(data.data_file(eval_dir, "freshqa"))[0]
    c = s.generate(qa.prompt_for(q["question"]), max_tokens=8, temperature=0)
    first_line = [line for line in c.text.split("\n") if line.strip()][0].strip()
    assert r["qa"]["full"]["predictions"] == [first_line]
    assert r["qa"]["full"]["exact_match"] == float(metrics.exact_match(first_line, q["answers"]))

    col = r["collapse"]["full"]
    assert 0 < col["distinct_1"] <= 1 and 0 <= col["repeated_4gram_rate"] < 1
    assert r["collapse"]["random@0"]["distinct_2"] == col["distinct_2"]

    if HAVE_ROUGE:
        for key in ("full", "random@0"):
            a = r["agreement"][key]
            assert a["token_agreement"] == 1.0 and a["identical_prefix"] == 24 and a["rouge_l"] == 1.0
            assert r["summarize"][key]["rouge_l_full"] == 1.0
        assert r["agreement"]["random@0.3"]["token_agreement"] < 1.0
        assert set(r["summarize"]["full"]["buckets"]) == {"small", "medium", "large"}
        files = sorted(p.name for p in (out / "mtbench").iterdir())
        assert files == sorted(f"SmolLM2-135M-Instruct.Q4_1{'' if k == 'full' else '+' + k}.jsonl" for k in keys)
        rec = json.loads((out / "mtbench" / "SmolLM2-135M-Instruct.Q4_1+random@0.3.jsonl").read_text().splitlines()[0])
        assert rec["model_id"] == "SmolLM2-135M-Instruct.Q4_1+random@0.3" and len(rec["choices"][0]["turns"]) == 2

    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["ppl"]["full"]["ppl"] == r["ppl"]["full"]["ppl"]
    table = (out / "results.md").read_text()
    assert "| random | 30.0 |" in table and "| full | 0.0 | 0.0 |" in table
    if HAVE_MPL:
        assert (out / "plots" / "ppl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (out / "plots" / "ppl.png").unlink()
        rewrite_reports(out / "results.json")
        assert (out / "plots" / "ppl.png").is_file()
    assert markdown_table(saved) == table

    # --update: run one task again on the same cells, keep the others
    before = saved["results"]["ppl"]
    again = run_sweep(smollm2_q4_1, eval_dir, out, tasks=["collapse"], policies=["random"], ratios=[0.1], limit=1,
                      threads=2, settings=Settings(collapse_tokens=20, n_ctx=512), update=True, plots=False,
                      progress=False, command="second")
    assert [c["key"] for c in again["cells"]] == keys
    assert again["results"]["ppl"] == before and again["results"]["collapse"]["full"]["tokens"] == 20
    assert [run["command"] for run in again["runs"]][-1] == "second" and len(again["runs"]) == 2


def test_surrogate_twins_of_cells(tmp_path):
    ranking = list(range(29, -1, -1))
    cells = make_cells(["ffn_skip", "random", "cheapest"], [0.1], n_layer=30, warmup=8, ranking=ranking,
                       surrogates=str(tmp_path / "s.gguf"))
    by = {c.key: c for c in cells}
    assert sorted(by) == ["cheapest+sur@0.1", "cheapest@0.1", "ffn_skip+sur@0.1", "ffn_skip@0.1", "full", "random@0.1"]
    twin, plain = by["cheapest+sur@0.1"].config, by["cheapest@0.1"].config
    assert twin == dict(plain, surrogates=str(tmp_path / "s.gguf"))
    assert "surrogates" not in by["ffn_skip@0.1"].config and "surrogates" not in by["random@0.1"].config
