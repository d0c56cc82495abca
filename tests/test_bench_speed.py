"""bench/bench_speed.py takes registry names and names its files' weight types, without llama.cpp."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import bench_speed  # noqa: E402
import random_model  # noqa: E402


@pytest.mark.parametrize("name, expected", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
    ("SmolLM2-135M-Instruct.Q4_K_M.gguf", "Q4_K_M"),
    ("SmolLM2-135M-Instruct.F16.gguf", "F16"),
    ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Q4_K_M"),   # dots in the name, type after a dash
    ("qwen2.5-coder-0.5b-instruct-q8_0.gguf", "Q8_0"),
    ("model_IQ4_XS.gguf", "IQ4_XS"),
])
def test_format_name_from_the_file_name(name, expected):
    assert bench_speed.format_name(pathlib.Path(name)) == expected


def test_format_name_from_the_gguf_when_the_name_does_not_say(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert bench_speed.format_name(path) == "Q4_K_M"
    assert bench_speed.format_name(tmp_path / "missing.gguf") == "missing"


def test_resolve_models_maps_registry_names_to_the_cache(tmp_path, monkeypatch):
    from ffnskip import models

    fetched = []
    def fake_model_path(name, **kw):
        fetched.append(name)
        return tmp_path / models.REGISTRY[name].file
    monkeypatch.setattr(models, "model_path", fake_model_path)
    real = tmp_path / "a.gguf"
    real.write_bytes(b"")
    out = bench_speed.resolve_models([str(real), "qwen2.5-coder-1.5b", "no-such-model"])
    assert out == [real, tmp_path / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", pathlib.Path("no-such-model")]
    assert fetched == ["qwen2.5-coder-1.5b"]


def test_main_runs_a_registry_name_with_ffnskip_alone(tmp_path, monkeypatch):
    """The whole script on a tiny random model reached through a registry name
    (no llama.cpp, no fetch): one configuration, its format, decode and prompt rates."""
    from ffnskip import models

    path = tmp_path / "tiny-instruct-q4_k.gguf"
    random_model.write_model(path, (256, 1, 4, 256), "Q4_K")
    monkeypatch.setattr(models, "model_path", lambda name, **kw: path)
    out = tmp_path / "bench.json"
    rc = bench_speed.main(["--models", "qwen2.5-coder-1.5b", "--engines", "ffnskip", "--threads", "1",
                           "--reps", "1", "--decode-tokens", "4", "--prompt-tokens", "16", "--n-ctx", "128",
                           "--load-reps", "1", "--no-bandwidth", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    [res] = data["results"]
    assert res["model"] == str(path) and res["format"] == "Q4_K"
    eng = res["engines"]["ffnskip"]
    assert "error" not in eng, eng.get("error")
    assert eng["decode_tps"] > 0 and eng["prompt_tps"] > 0 and len(eng["tokens"]) == 4
