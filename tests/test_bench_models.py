"""The random-weight models of bench/random_model.py load, run and read as their shape says."""
import pathlib
import sys

import numpy as np
import pytest

import ffnskip

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import random_model  # noqa: E402


@pytest.mark.parametrize("type_name", ["F16", "Q8_0", "Q4_K", "Q6_K"])
def test_random_model_loads_and_runs(tmp_path, type_name):
    from gguf import GGUFReader

    shape = (256, 2, 4, 512)   # n_embd, n_layer, n_head, n_ff
    path = tmp_path / f"random-{type_name}.gguf"
    random_model.write_model(path, shape, type_name)
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    assert len(tensors) == 2 + 1 + 2 * 9
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == type_name
    assert [int(d) for d in tensors["blk.0.ffn_up.weight"].shape] == [256, 512]
    model = ffnskip.Model(str(path))
    assert (model.hparams.n_embd, model.hparams.n_layer, model.hparams.n_ff) == (256, 2, 512)
    assert model.n_vocab == random_model.N_VOCAB
    logits = ffnskip.Session(str(path), n_ctx=32, n_threads=1).eval([1, 500, 2000, 7000])
    assert logits.shape == (random_model.N_VOCAB,) and np.isfinite(logits).all()
