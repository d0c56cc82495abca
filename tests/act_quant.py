"""Numpy emulation of how llama.cpp's CPU backend (and ffnskip) feeds activations to
quantized dot products: each activation row is converted to the weight type's
`vec_dot_type` first (8-bit blocks for quantized weights, fp16 / bf16 for F16 / BF16).
Wrapping the reference model's matrices with it turns the float oracle into an
oracle for that arithmetic, from the published block formats alone."""
from __future__ import annotations

import numpy as np

VEC_DOT_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
}


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16   # round to nearest even
    return bits.astype(np.uint32).view(np.float32)


def quantize_dequantize(x: np.ndarray, fmt: str) -> np.ndarray:
    """x (..., n) float32 -> the values the dot product sees."""
    x = np.asarray(x, dtype=np.float32)
    if fmt == "F32":
        return x
    if fmt == "F16":
        return _f16(x)
    if fmt == "BF16":
        return _bf16(x)
    shape = x.shape
    if fmt in ("Q8_0", "Q8_1"):
        b = x.reshape(-1, 32)
        d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        q = _round_half_away(b * inv)
        return (q * _f16(d)).reshape(shape).astype(np.float32)
    if fmt == "Q8_K":
        b = x.reshape(-1, 256)
        idx = np.abs(b).argmax(axis=1)
        mx = b[np.arange(b.shape[0]), idx][:, None]
        iscale = np.divide(np.float32(-127), mx, out=np.zeros_like(mx), where=mx != 0)
        q = np.minimum(np.float32(127), np.rint(iscale * b))
        d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=iscale != 0)
        return (q * d).reshape(shape).astype(np.float32)
    raise ValueError(f"no activation format {fmt}")


class QuantizedInputMatrix:
    """Stands in for a weight matrix W in `h @ W.T`: converts h first."""

    __array_ufunc__ = None   # make numpy defer `h @ self` to __rmatmul__

    def __init__(self, w: np.ndarray, weight_type: str):
        self.w = w
        self.fmt = VEC_DOT_TYPE[weight_type]

    @property
    def T(self) -> "QuantizedInputMatrix":
        return self

    def __rmatmul__(self, h: np.ndarray) -> np.ndarray:
        return quantize_dequantize(h, self.fmt) @ self.w.T


def emulate_activation_quantization(ref, tensor_types: dict[str, str]) -> None:
    """Wrap every matrix of a ReferenceModel; tensor_types maps GGUF tensor names to types."""
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
    for il, layer in enumerate(ref.layers):
        for key, short in names.items():
            layer[key] = QuantizedInputMatrix(layer[key], tensor_types[f"blk.{il}.{short}.weight"])
    out_name = "output.weight" if "output.weight" in tensor_types else "token_embd.weight"
    ref.output = QuantizedInputMatrix(ref.output, tensor_types[out_name])
