"""The C++ side: the test binary through ctest, `cmake --install` and find_package(ffnskip)
from a separate project, and the example application.

Builds the engine (no Python module) into a temporary folder: a minute or two.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import textwrap

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="cmake and a C++ compiler are needed")

GREEDY_PROMPT = [1, 2, 3]
GREEDY_N = 6


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)


def _ok(cmd, **kwargs) -> subprocess.CompletedProcess:
    out = _run(cmd, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def _generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory) -> pathlib.Path:
    build = tmp_path_factory.mktemp("cpp") / "build"
    _ok(["cmake", "-S", REPO_ROOT, "-B", build, *_generator(), "-DCMAKE_BUILD_TYPE=Release",
         "-DFFNSKIP_PYTHON=OFF", "-DFFNSKIP_TESTS=ON", "-DFFNSKIP_CUDA=OFF"])
    _ok(["cmake", "--build", build])
    return build


@pytest.fixture(scope="module")
def installed(cpp_build, tmp_path_factory) -> pathlib.Path:
    prefix = tmp_path_factory.mktemp("cpp") / "prefix"
    _ok(["cmake", "--install", cpp_build, "--prefix", prefix])
    return prefix


@pytest.fixture(scope="module")
def model_and_greedy(tmp_path_factory):
    """A small F32 model and its greedy continuation of GREEDY_PROMPT by the numpy reference."""
    from reference_forward import ReferenceModel
    from synthetic import write_llama_gguf

    path = write_llama_gguf(tmp_path_factory.mktemp("cpp-model") / "m.gguf", n_ctx=64, seed=3)
    ids = ReferenceModel(path).greedy(GREEDY_PROMPT, GREEDY_N, stop_ids=())
    assert len(ids) == GREEDY_N
    return path, ids


def test_ctest(cpp_build, model_and_greedy):
    path, ids = model_and_greedy
    env = dict(os.environ, FFNSKIP_TEST_MODEL=str(path), FFNSKIP_TEST_GREEDY=",".join(map(str, ids)))
    out = _ok(["ctest", "--test-dir", cpp_build, "--output-on-failure"], env=env)
    assert "100% tests passed" in out.stdout
    # the binary itself: every registered test ran, the model ones included
    out = _ok([cpp_build / "ffnskip_tests"], env=env)
    last = out.stdout.strip().splitlines()[-1]
    n_passed = int(last.split()[0])
    assert last.endswith(" passed, 0 failed") and n_passed >= 9, out.stdout
    assert "skipped" not in out.stdout


def test_cpp_tests_fail_on_a_wrong_reference(cpp_build, model_and_greedy):
    # the greedy check compares, so a wrong expectation must fail the binary
    path, ids = model_and_greedy
    wrong = [(ids[0] + 1) % 384] + ids[1:]
    env = dict(os.environ, FFNSKIP_TEST_MODEL=str(path), FFNSKIP_TEST_GREEDY=",".join(map(str, wrong)))
    out = _run([cpp_build / "ffnskip_tests", "api_generation"], env=env)
    assert out.returncode != 0 and "differ from the reference" in out.stderr


def test_install_layout(installed):
    assert (installed / "include" / "ffnskip" / "ffnskip.h").is_file()
    libs = list(installed.glob("lib*/libffnskip.a"))
    assert libs, sorted(str(p.relative_to(installed)) for p in installed.rglob("*"))
    cfg = libs[0].parent / "cmake" / "ffnskip"
    for name in ("ffnskipConfig.cmake", "ffnskipConfigVersion.cmake", "ffnskipTargets.cmake"):
        assert (cfg / name).is_file(), name


def test_find_package_consumer(installed, tmp_path, model_and_greedy):
    src = tmp_path / "consumer"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(textwrap.dedent("""\
        cmake_minimum_required(VERSION 3.21)
        project(consumer LANGUAGES CXX)
        set(CMAKE_CXX_STANDARD 17)
        find_package(ffnskip 0.1 CONFIG REQUIRED)
        add_executable(consumer main.cpp)
        target_link_libraries(consumer PRIVATE ffnskip::ffnskip)
        """))
    (src / "main.cpp").write_text(textwrap.dedent("""\
        #include <ffnskip/ffnskip.h>
        #include <cstdio>
        int main(int argc, char** argv) {
            std::printf("version %s\\n", ffnskip::version());
            try {
                ffnskip::Model::load("/nonexistent.gguf");
            } catch (const ffnskip::FileNotFoundError& e) {
                std::printf("missing ok\\n");
            }
            auto model = ffnskip::Model::load(argv[1]);
            std::printf("n_vocab %d n_layer %d\\n", model->n_vocab(), model->hparams().n_layer);
            return 0;
        }
        """))
    build = tmp_path / "consumer-build"
    _ok(["cmake", "-S", src, "-B", build, *_generator(), f"-DCMAKE_PREFIX_PATH={installed}"])
    _ok(["cmake", "--build", build])
    path, _ = model_and_greedy
    out = _ok([build / "consumer", path])
    assert "version 0.1" in out.stdout and "missing ok" in out.stdout
    assert "n_vocab 384 n_layer 2" in out.stdout


@pytest.fixture(scope="module")
def example(installed, tmp_path_factory) -> pathlib.Path:
    build = tmp_path_factory.mktemp("example") / "build"
    _ok(["cmake", "-S", REPO_ROOT / "examples" / "cpp", "-B", build, *_generator(),
         f"-DCMAKE_PREFIX_PATH={installed}", "-DCMAKE_BUILD_TYPE=Release"])
    _ok(["cmake", "--build", build])
    return build / "generate"


def test_example_generates_the_reference_tokens(example, model_and_greedy):
    path, ids = model_and_greedy
    out = _ok([example, path, "--tokens", ",".join(map(str, GREEDY_PROMPT)), "-n", GREEDY_N,
               "--temp", "0", "--ignore-eos", "--threads", "2", "--ctx", "32"])
    lines = dict(line.split(": ", 1) for line in out.stderr.splitlines() if ": " in line)
    assert lines["tokens"] == ",".join(map(str, ids))
    assert lines["finish"] == "length"
    assert lines["decode"].startswith(f"{GREEDY_N} tokens")


def test_example_errors(example, model_and_greedy, tmp_path):
    path, _ = model_and_greedy
    out = _run([example, tmp_path / "missing.gguf", "--tokens", "1"])
    assert out.returncode == 3 and "no such file" in out.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x01\x00\x00\x00")
    out = _run([example, bad, "--tokens", "1"])
    assert out.returncode == 4 and "version 1" in out.stderr
    out = _run([example, path, "--tokens", "1,99999"])
    assert out.returncode == 1 and "token id 99999 is out of range" in out.stderr
    out = _run([example, path, "--tokens", "1", "--temp", "-1"])
    assert out.returncode == 1 and "temperature" in out.stderr
    out = _run([example, path, "--bogus"])
    assert out.returncode == 1 and "unknown option --bogus" in out.stderr
