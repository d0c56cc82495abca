"""The wheel a user installs: `pip wheel .` builds one whose native module needs no
more than manylinux allows, and that installs into a fresh virtual environment with no
compiler on PATH and runs `ffnskip generate` on the default model, printing llama.cpp's
greedy continuation.

Building the wheel takes minutes on 2 cores, so these tests carry the `wheel` marker and
the default run leaves them out; CI runs them as a step of their own:
`python -m pytest -m wheel tests/test_wheel.py`. $FFNSKIP_WHEEL names a wheel to check
instead of building one.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.wheel

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"
COMPILERS = ("cc", "c++", "gcc", "g++", "clang", "clang++")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    given = os.environ.get("FFNSKIP_WHEEL")
    if given:
        return pathlib.Path(given)
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO_ROOT)],
                       capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    (path,) = out.glob("ffnskip-*.whl")
    return path


def test_wheel_holds_the_package_and_a_portable_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ffnskip/data/calibration_sample.txt" in names
    assert any(n.startswith("ffnskip/_core") and n.endswith(".so") for n in names), names
    assert not any(n.startswith("tests/") for n in names)
    pytest.importorskip("auditwheel")
    p = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert 'is consistent with the following platform tag: "manylinux_' in text, p.stdout
    # nothing beyond the C/C++ runtime that every manylinux system has: nothing to bundle
    assert "external shared libraries are required" not in text, p.stdout


def test_installs_without_a_compiler_and_generates(wheel, tmp_path, smollm2_q4_1, data_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CC", "CXX", "CMAKE_ARGS")}
    env["PATH"] = str(bin_dir)
    env["FFNSKIP_CACHE"] = str(smollm2_q4_1.parent)   # the model the suite fetched: no download
    for name in COMPILERS:
        assert shutil.which(name, path=env["PATH"]) is None, name

    p = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--only-binary=:all:", str(wheel)],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    p = subprocess.run([str(bin_dir / "python"), "-c", "import ffnskip; print(ffnskip.__file__)"],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith(str(venv)), p.stdout + p.stderr

    ref = json.loads((data_dir / "reference" / "greedy_q4_1.json").read_text())["prompts"]
    case = next(c for c in ref.values() if c["prompt"] == PROMPT)
    n = 8
    import ffnskip
    expected = ffnskip.Model(str(smollm2_q4_1)).detokenize(case["generated_ids"][:n])   # llama.cpp's tokens
    p = subprocess.run([str(bin_dir / "ffnskip"), "generate", PROMPT, "-n", str(n), "-t", "2"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == PROMPT + expected + "\n"
    assert "downloading" not in p.stderr
