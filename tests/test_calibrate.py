"""Calibration: cosine profile, cold regions, ablation costs, target ratio and quality
budget on the real SmolLM2 model, measured on text the calibration did not see."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from ffnskip import Session, skip_config
from ffnskip import calibrate as cal

# Small sizes keep the suite short; the profile logic is size-independent.
PROMPT = 16
N_CTX = 320


def _wikitext(data_dir, name: str, start: int, n_chars: int) -> str:
    text = (data_dir / "eval" / "wikitext-2" / name).read_text(encoding="utf-8")
    return text[start:start + n_chars]


@pytest.fixture(scope="module")
def texts(data_dir):
    # calibration, held-out (used by the search), and a third text only the tests see
    return (_wikitext(data_dir, "valid.txt", 0, 4000),
            _wikitext(data_dir, "test.txt", 0, 4000),
            _wikitext(data_dir, "test.txt", 400000, 6000))


@pytest.fixture(scope="module")
def session(smollm2_q4_1):
    return Session(smollm2_q4_1, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def target_profile(session, texts, tmp_path_factory):
    text, held_out, _ = texts
    profile = cal.calibrate(session, text, held_out=held_out, target_ratio=0.25, tokens=48, held_out_tokens=32,
                            generate_tokens=48, prompt_tokens=PROMPT)
    path = tmp_path_factory.mktemp("profile") / "target.json"
    cal.save_profile(profile, path)
    return profile, path


# ---- pure functions (hand-computed expectations) --------------------------------------
def test_predict_ratio_follows_the_schedule_arithmetic():
    # 4 steps x 10 layers; cold 2 + 2: the gate looks at layers 1..6, skips up to layer 7
    c = np.full((4, 10), 0.5)
    c[0, 1] = 0.99          # gate at layer 1: skips 2, 3, 4 (max_skip 3)
    c[1, 6] = 0.99          # gate at layer 6: only layer 7 is left before the cold end
    c[2, 8] = 0.99          # layer 8 is cold: the gate never looks there
    c[3, 3] = 0.96          # below the threshold
    got = cal.predict_ratio(c, 0.97, 3, cold_start=2, cold_end=2, refresh_every=6)
    assert got == pytest.approx((5 / 6) * ((3 + 1 + 0 + 0) / 4) / 10)
    assert cal.predict_ratio(c, 0.97, 3, 2, 2, refresh_every=0) == pytest.approx((3 + 1) / 4 / 10)
    assert cal.predict_ratio(c, 0.5, 3, 2, 2, refresh_every=0) == pytest.approx(3 / 10)   # fires at layer 1 always
    assert cal.predict_ratio(c, 0.97, 0, 2, 2, refresh_every=6) == 0.0


def test_cold_regions_rule():
    mean = [0.06, 0.5, 0.95, 0.96, 0.7, 0.97, 0.96, 0.95, 0.8]
    r = cal.cold_regions(mean, cold_cutoff=0.9, cold_margin=0.05)
    # median 0.95 - 0.05 = 0.90 = cutoff; leading 0.06, 0.5 and trailing 0.8 are below it
    assert r["cutoff"] == pytest.approx(0.9)
    assert (r["cold_start"], r["cold_end"]) == (2, 1)
    assert r["cold_layers"] == [0, 1, 8]
    assert r["warm_layers_below_cutoff"] == [4]
    # a lower median moves the cutoff down: LLaMA-2-like 0.87-0.92 middle stays warm
    r = cal.cold_regions([0.3, 0.88, 0.87, 0.9, 0.92, 0.6], cold_cutoff=0.9, cold_margin=0.05)
    assert (r["cold_start"], r["cold_end"]) == (1, 1)


def test_cosine_profile_percentiles():
    c = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, np.nan]])
    p = cal.cosine_profile(c)
    assert p["mean"] == pytest.approx([1.0, 1.0])
    assert p["p50"] == pytest.approx([1.0, 1.0])
    assert p["p10"] == pytest.approx([0.2, 1.0])
    assert p["p90"] == pytest.approx([1.8, 1.0])


def test_argument_checks(session):
    with pytest.raises(ValueError, match="not both"):
        cal.calibrate(session, "x", target_ratio=0.2, max_ppl_increase=0.02)
    with pytest.raises(ValueError, match="too short"):
        cal.calibrate(session, "a few words only", held_out="and a few more", tokens=32, prompt_tokens=PROMPT)


# ---- the real model ------------------------------------------------------------------
def test_profile_fields_and_shapes(target_profile):
    p, path = target_profile
    n = p["n_layer"]
    assert n == 30
    for key in ("mean", "p10", "p50", "p90"):
        assert len(p["cosine_profile"][key]) == n
    lo, mid, hi = (np.array(p["cosine_profile"][k]) for k in ("p10", "p50", "p90"))
    assert np.all(lo <= mid + 1e-12) and np.all(mid <= hi + 1e-12)
    assert np.all(np.abs(p["cosine_profile"]["mean"]) <= 1.0)
    # a window of k scored tokens gives k - 1 decode steps with cosines
    assert p["tokens"]["calibration"] == 47 and p["tokens"]["held_out"] == 32
    assert len(p["ablation"]["ppl"]) == n and len(p["ablation"]["cost"]) == n
    assert sorted(p["ablation"]["order"]) == list(range(n))
    assert p["full_ppl"] > 1.0
    assert p["model"]["file_size"] == os.path.getsize(p["model"]["path"])
    assert p["config"]["policy"] == "ffn_skip"
    json.loads(path.read_text())   # strict JSON (no NaN)


def test_cold_regions_cover_layer_0(target_profile):
    # SmolLM2's first FFN rewrites the residual (cosine ~0.06): it must stay cold, and
    # skipping it alone must cost far more than any middle FFN.
    p, _ = target_profile
    assert p["cosine_profile"]["mean"][0] < 0.3
    assert p["cold_regions"]["cold_start"] >= 1 and 0 in p["cold_regions"]["cold_layers"]
    assert p["config"]["cold_start"] == p["cold_regions"]["cold_start"]
    costs = p["ablation"]["cost"]
    assert costs[0] > max(costs[5:25])


def test_target_ratio_measured_on_held_out_generation(target_profile, smollm2_q4_1, texts):
    # the profile, loaded by Session, applied to text the calibration did not see
    p, path = target_profile
    s = Session(smollm2_q4_1, n_ctx=N_CTX, skip=str(path))
    assert s.skip.policy == "ffn_skip"
    assert s.skip.max_skip == p["config"]["max_skip"]
    assert s.skip.threshold == pytest.approx(p["config"]["threshold"])
    assert (s.skip.cold_start, s.skip.cold_end) == (p["config"]["cold_start"], p["config"]["cold_end"])
    prompt = s.tokenize(texts[2])[:PROMPT]
    c = s.generate(prompt, max_tokens=256, temperature=0, ignore_eos=True)
    st = c.stats
    assert st["n_generated"] == 256
    # the last generated token is never fed back: 255 steps, the first N_CTX / 64 in full
    assert st["skip_steps_after_warmup"] == 255 - N_CTX // 64
    assert abs(st["skip_ratio_after_warmup"] - 0.25) <= 0.05, st["skip_ratio_after_warmup"]


def test_quality_budget_holds_on_unseen_text(session, texts):
    text, held_out, unseen = texts
    p = cal.calibrate(session, text, held_out=held_out, max_ppl_increase=0.02, tokens=32, held_out_tokens=64,
                      generate_tokens=16, prompt_tokens=PROMPT, max_evals=3)
    fs = p["ffn_skip"]
    assert fs["ppl"] <= p["full_ppl"] * 1.02 * (1 + 1e-12)
    assert p["layers_alternative"]["ppl"] <= p["full_ppl"] * 1.02 * (1 + 1e-12)
    ids = session.tokenize(unseen)
    prompt, cont = ids[:PROMPT], ids[PROMPT:PROMPT + 160]
    full_nll, _ = session.score(prompt, cont, skip="full")
    skip_nll, stats = session.score(prompt, cont, skip=p["config"])
    ratio = math.exp((skip_nll - full_nll) / len(cont))
    assert ratio <= 1.02, (ratio, p["config"], stats["skip_ratio_after_warmup"])


def test_auto_uses_the_profile_beside_the_model(target_profile, smollm2_q4_1, tmp_path):
    p, path = target_profile
    link = tmp_path / "model.gguf"
    link.symlink_to(smollm2_q4_1)
    cal.beside_model_path(link).write_text(path.read_text())
    s = Session(str(link), n_ctx=N_CTX, skip="auto")
    assert s.skip.max_skip == p["config"]["max_skip"]
    assert s.skip.cold_start == p["config"]["cold_start"]
    with pytest.raises(ValueError, match="needs the model"):
        skip_config("auto")


def test_auto_calibrates_once_and_caches(target_profile, smollm2_q4_1, tmp_path, monkeypatch):
    p, _ = target_profile
    monkeypatch.setenv("FFNSKIP_CACHE", str(tmp_path / "cache"))
    link = tmp_path / "m.gguf"
    link.symlink_to(smollm2_q4_1)
    calls = []

    def runner(model, text, **kw):
        calls.append((model, text, kw))
        return dict(p)

    first = cal.auto_profile_path(link, progress=False, runner=runner)
    second = cal.auto_profile_path(link, progress=False, runner=runner)
    assert first == second and first.is_file() and str(first).startswith(str(tmp_path / "cache"))
    assert len(calls) == 1
    assert calls[0][1] == cal.sample_text() and calls[0][2]["max_ppl_increase"] == 0.02
    assert 3000 < len(cal.sample_text().encode()) < 16000


def test_cli_calibrate_writes_json_and_png(smollm2_q4_1, texts, tmp_path):
    from ffnskip.cli import main

    text_file, held_file = tmp_path / "cal.txt", tmp_path / "held.txt"
    text_file.write_text(texts[0])
    held_file.write_text(texts[1])
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
    argv = [str(smollm2_q4_1), "--text", str(text_file), "--held-out", str(held_file), "--target-ratio", "0.2",
            "--tokens", "16", "--held-out-tokens", "16", "--generate-tokens", "16", "--prompt-tokens", "8", "-q"]
    if have_mpl:
        argv += ["--plot", str(png)]
    assert main(["calibrate", *argv, "--out", str(out)]) == 0
    profile = json.loads(out.read_text())
    assert profile["config"]["policy"] == "ffn_skip" and profile["target_ratio"] == 0.2
    assert profile["command"].startswith("ffnskip calibrate")
    skip_config(str(out))   # loads as a SkipConfig
    if not have_mpl:
        pytest.skip("matplotlib not installed: PNG not checked")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
