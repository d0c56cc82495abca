"""Random-weight LLaMA GGUFs of real models' shapes, for speed measurements.

    python bench/random_model.py --shape 1b --type Q4_K OUT.gguf

Speed does not depend on the values: F16 weights are small normal values, quantized
blocks random bytes with small fp16 scales (as the tests make K-quant blocks), so that
activations stay finite through the layers. Every layer shares its arrays.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import gguf  # noqa: E402

SHAPES = {   # n_embd, n_layer, n_head, n_ff
    "7b": (4096, 32, 32, 11008),
    "13b": (5120, 40, 40, 13824),
    "1b": (2048, 22, 32, 5632),   # TinyLlama-1.1B's shape
}
N_VOCAB = 32000
# (bytes per block, elements per block, byte offsets of fp16 scales in a block, scale size
# that gives weights of about F16's spread, 0.02: activations stay finite over 40 layers)
BLOCKS = {"Q8_0": (34, 32, (0,), 2.7e-4), "Q4_K": (144, 256, (0, 2), 1.2e-4), "Q6_K": (210, 256, (208,), 1.5e-5)}

def matrix_bytes(rng, type_name, rows, cols):
    """A (rows, cols) weight as GGUF stores it: F16 values, or raw quantized blocks."""
    if type_name == "F16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    size, per, scale_offsets, scale = BLOCKS[type_name]
    n_blocks = cols // per
    raw = rng.integers(0, 256, size=(rows, n_blocks, size), dtype=np.uint8)
    scales = ((rng.random((rows, n_blocks), dtype=np.float32) + 0.5) * scale).astype(np.float16).view(np.uint8)
    scales = scales.reshape(rows, n_blocks, 2)
    for off in scale_offsets:
        raw[:, :, off:off + 2] = scales
    return raw.reshape(rows, n_blocks * size)


def write_model(path, shape, type_name, seed=0):
    """A LLaMA GGUF of the given shape; every layer shares its arrays (values do not matter)."""
    from synthetic import gpt2_vocab

    n_embd, n_layer, n_head, n_ff = shape
    rng = np.random.default_rng(seed)
    tokens, types, merges, bos, eos = gpt2_vocab(None)
    # Fill to LLaMA's 32000 with tokens no merge produces (the decode loop only needs ids).
    tokens = tokens + [f"<pad{i}>" for i in range(N_VOCAB - len(tokens))]
    types = list(types) + [gguf.TokenType.USER_DEFINED] * (N_VOCAB - len(types))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random-{n_layer}L-{type_name}")
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)

    qtype = gguf.GGMLQuantizationType[type_name]
    cache = {}

    def add(name, rows, cols):
        key = (rows, cols)
        if key not in cache:
            cache[key] = matrix_bytes(rng, type_name, rows, cols)
        arr = cache[key]
        w.add_tensor(name, arr, raw_dtype=None if type_name == "F16" else qtype)

    norm = np.ones(n_embd, dtype=np.float32)
    add("token_embd.weight", N_VOCAB, n_embd)
    w.add_tensor("output_norm.weight", norm)
    add("output.weight", N_VOCAB, n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm)
        w.add_tensor(p + "ffn_norm.weight", norm)
        for t, rows, cols in (("attn_q", n_embd, n_embd), ("attn_k", n_embd, n_embd), ("attn_v", n_embd, n_embd),
                              ("attn_output", n_embd, n_embd), ("ffn_gate", n_ff, n_embd), ("ffn_up", n_ff, n_embd),
                              ("ffn_down", n_embd, n_ff)):
            add(p + t + ".weight", rows, cols)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--type", choices=["F16", *sorted(BLOCKS)], default="Q4_K")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_model(args.out, SHAPES[args.shape], args.type, args.seed)
    print(f"{args.out}: {args.shape} shape {SHAPES[args.shape]}, {args.type}, {args.out.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
