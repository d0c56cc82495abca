"""`ffnskip perplexity` against the numpy reference, and `ffnskip calibrate
--surrogate-rank` end to end on a synthetic model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ffnskip
from ffnskip import surrogate as sg
from reference_forward import ReferenceModel, log_softmax
from test_cli import run_cli
from test_surrogate_engine import reference_trace

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 +
        "Pack my box with five dozen liquor jugs, and then some more words follow here. " * 4)


@pytest.fixture(scope="module")
def model_path(synthetic_model):
    return str(synthetic_model(n_embd=64, n_layer=6, n_head=4, n_head_kv=2, n_ff=96, weight_type="F32",
                               seed=31, n_ctx=512))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def _reference_ppl(model_path, ids, ctx, skipped=()):
    ref = ReferenceModel(model_path, kv_f16=True)
    nll, n = 0.0, 0
    for start in range(0, len(ids), ctx):
        w = ids[start:start + ctx]
        if len(w) < 2:
            break
        *_, logits = reference_trace(ref, w[:-1], skipped=skipped)
        nll -= sum(log_softmax(logits[i])[w[i + 1]] for i in range(len(w) - 1))
        n += len(w) - 1
    return math.exp(nll / n), n


@pytest.mark.parametrize("skip_args,skipped", [((), ()), (("--skip", "layers", "--skip-set", "layers=[1,3]"), (1, 3))])
def test_perplexity_matches_the_reference(model_path, text_file, skip_args, skipped):
    r = run_cli("perplexity", model_path, "--text", text_file, "--ctx", "48", "--json", *skip_args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ids = ffnskip.Session(model_path, n_ctx=64).tokenize(TEXT)
    want, n = _reference_ppl(model_path, ids, 48, skipped)
    assert out["tokens"] == n and out["windows"] == math.ceil(len(ids) / 48)
    assert out["ppl"] == pytest.approx(want, rel=1e-4)
    assert out["skip_ratio"] == pytest.approx(len(skipped) / 6 if skipped else 0.0)


def test_perplexity_bad_input(model_path, tmp_path):
    (tmp_path / "one.txt").write_text("a", encoding="utf-8")
    r = run_cli("perplexity", model_path, "--text", str(tmp_path / "one.txt"))
    assert r.returncode == 1 and "at least 2" in r.stderr
    r = run_cli("perplexity", model_path, "--text", str(tmp_path / "missing.txt"))
    assert r.returncode == 1 and "missing.txt" in r.stderr


def test_calibrate_with_surrogates_writes_a_profile_and_its_sidecar(model_path, text_file, tmp_path):
    out = tmp_path / "prof.json"
    r = run_cli("calibrate", model_path, "--text", text_file, "--policy", "layers", "--target-ratio", "0.34",
                "--surrogate-rank", "4", "--surrogate-tokens", "64", "--tokens", "16", "--held-out-tokens", "16",
                "--generate-tokens", "16", "--prompt-tokens", "8", "--ctx", "64", "-q", "--out", str(out), "--sequential",
                timeout=300)
    assert r.returncode == 0, r.stderr
    profile = json.loads(out.read_text())
    sidecar = tmp_path / "prof.surrogates.gguf"
    seq = tmp_path / "prof.sequential.surrogates.gguf"
    assert profile["config"]["policy"] == "layers" and profile["config"]["surrogates"] in (sidecar.name, seq.name)
    # every sidecar the profile names beside itself is named relative to it
    assert profile["surrogates"] == profile["layers_alternative"]["config"]["surrogates"] == sidecar.name
    assert len(profile["config"]["layers"]) == 2            # round(0.34 x 6)
    fitted, meta = sg.load(sidecar, n_embd=64, n_layer=6)
    assert sorted(fitted) == list(range(6)) and all(s.rank == 4 for s in fitted.values())
    assert meta["text"] == "t.txt" and meta["rank"] == 4 and meta["tokens"] > 0
    alt = profile["layers_alternative"]
    assert math.isfinite(alt["ppl"]) and math.isfinite(alt["ppl_without_surrogates"])
    assert "surrogates" in r.stdout
    # The sequential refit covers the chosen set only, and was measured.
    seq_fitted, seq_meta = sg.load(seq, n_embd=64, n_layer=6)
    assert sorted(seq_fitted) == alt["layers"] and seq_meta["sequential"] is True
    assert math.isfinite(alt["ppl_sequential"])
    assert profile["config"]["surrogates"] == (seq.name if alt["ppl_sequential"] < alt["ppl"] else sidecar.name)
    # The profile runs, with its surrogates, from anywhere.
    p = run_cli("perplexity", model_path, "--text", text_file, "--ctx", "48", "--json", "--skip", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["surrogates_run"] > 0 and res["skip_ratio"] == pytest.approx(2 / 6)
