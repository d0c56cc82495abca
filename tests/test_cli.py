"""The `ffnskip` command line, run as `python -m ffnskip` in a subprocess.

Metadata and tensor types are checked against the gguf package's reader; the
generated text against llama.cpp's greedy reference.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import ffnskip

PROMPT = "The capital of France is"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    package_root = str(pathlib.Path(ffnskip.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "ffnskip", *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=timeout)


@pytest.mark.slow
def test_generate_prints_prompt_and_continuation(smollm2_q4_1, data_dir):
    ref = json.loads((data_dir / "reference" / "greedy_q4_1.json").read_text())["prompts"]
    case = next(c for c in ref.values() if c["prompt"] == PROMPT)
    n = 8
    model = ffnskip.Model(str(smollm2_q4_1))
    expected = model.detokenize(case["generated_ids"][:n])   # llama.cpp's first n tokens
    assert case["generated_text"].startswith(expected)
    p = run_cli("generate", str(smollm2_q4_1), PROMPT, "-n", str(n), "-t", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout == PROMPT + expected + "\n"
    n_prompt = len(case["prompt_ids_in_generation"])
    assert re.search(rf"prompt {n_prompt} tokens at [0-9.]+ tok/s, generated {n} tokens at [0-9.]+ tok/s, "
                     r"finish: length", p.stderr), p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_generate_with_stop_string(smollm2_q4_1):
    p = run_cli("generate", str(smollm2_q4_1), PROMPT, "-n", "16", "--stop", "\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == PROMPT + " Paris.\n"   # the stop string is not printed; the newline ends the output
    assert "finish: stop" in p.stderr


def test_info_lists_metadata_and_tensor_types(synthetic_model):
    # a small file: the gguf reader takes seconds on the real model's 49k-token vocabulary
    gguf = pytest.importorskip("gguf")
    path = synthetic_model(n_embd=64, n_layer=2, weight_type={"*": "Q4_1", "token_embd.weight": "Q8_0"},
                           tensor_types={"blk.1.ffn_down.weight": "F16"}, seed=21)
    reader = gguf.GGUFReader(str(path))
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert len(types) == 4
    p = run_cli("info", str(path))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"metadata ({len(keys)} keys):" in out
    for key in keys:
        assert f"\n  {key} = " in out, key
    assert "general.architecture = 'llama'" in out
    assert f"tensors ({len(reader.tensors)}):" in out
    for name, count in types.items():
        assert re.search(rf"^\s+{name}\s+{count} tensors ", out, re.M), (name, count)
    p = run_cli("info", str(path), "--tensors")
    for t in reader.tensors:
        assert re.search(rf"^\s+{re.escape(t.name)}\s+{t.tensor_type.name}\s", p.stdout, re.M), t.name


@pytest.mark.slow
def test_info_on_the_real_model(smollm2_q4_1):
    p = run_cli("info", str(smollm2_q4_1))
    assert p.returncode == 0, p.stderr
    assert "general.architecture = 'llama'" in p.stdout
    assert "\n  tokenizer.chat_template = " in p.stdout
    assert re.search(r"^\s+Q4_1\s+\d+ tensors ", p.stdout, re.M)
    assert re.search(r"\(49152 items\)", p.stdout)   # tokenizer.ggml.tokens, shortened


@pytest.mark.parametrize("command", ["generate", "info"])
def test_missing_model_is_a_clear_error(tmp_path, command):
    missing = tmp_path / "no-such-model.gguf"
    args = ["generate", str(missing), "hello"] if command == "generate" else ["info", str(missing)]
    p = run_cli(*args)
    assert p.returncode == 1
    assert p.stderr.startswith("ffnskip: error:")
    assert str(missing) in p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


def test_not_a_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a model file\n" * 4)
    p = run_cli("generate", str(bad), "hello")
    assert p.returncode == 1
    assert "ffnskip: error:" in p.stderr and "GGUF" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_bad_arguments(smollm2_q4_1):
    p = run_cli("generate", str(smollm2_q4_1), "hello", "-c", "-3")
    assert p.returncode == 1 and "n_ctx" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("generate", "a", "b", "c")
    assert p.returncode != 0 and "PROMPT" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("frobnicate")
    assert p.returncode == 2   # argparse usage error
