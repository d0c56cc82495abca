"""llama.cpp's SmolLM2-135M-Instruct Q4_K_M, rebuilt byte for byte from the Q4_1 model.

llama.cpp made the Q4_K_M file by re-quantizing the Q4_1 one (`llama-quantize
--allow-requantize`, no importance matrix): every tensor was de-quantized to F32 and
quantized again. Its Q5_0 and Q8_0 tensors come from llama.cpp's reference quantizers,
which gguf-py reproduces bit for bit, and its F32 tensors are copied; only the 30
Q4_K/Q6_K `ffn_down` tensors (gguf-py cannot quantize K-quants) and the header are
stored, in tests/data/models/ (20 MB instead of 105 MB; they do not compress).

    python tests/q4_k_m_model.py split ORIGINAL.gguf PARTS      # make the parts file
    python tests/q4_k_m_model.py rebuild Q4_1.gguf PARTS OUT    # and back
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import sys

import numpy as np

SIZE = 105_454_144
SHA256 = "dc0f3a02e821146247a0af6895adf9872124f368682cb110cb9ed09ff2a9f9f1"
STORED_TYPES = ("Q4_K", "Q6_K")


def sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _type_name(tensor) -> str:
    from gguf import GGMLQuantizationType
    return GGMLQuantizationType(int(tensor.tensor_type)).name


def split(original: str | os.PathLike[str], parts: str | os.PathLike[str]) -> None:
    """Write the header of `original` followed by its K-quant tensors' data, in file order."""
    from gguf import GGUFReader
    reader = GGUFReader(original)
    with open(original, "rb") as f:
        header = f.read(reader.data_offset)
    with open(parts, "wb") as out:
        out.write(header)
        for t in reader.tensors:
            if _type_name(t) in STORED_TYPES:
                out.write(np.asarray(t.data).tobytes())


def rebuild(q4_1: str | os.PathLike[str], parts: str | os.PathLike[str],
            out: str | os.PathLike[str]) -> pathlib.Path:
    """Write the Q4_K_M file to `out` (through a temporary file) and check its sha256."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    out = pathlib.Path(out)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    blob = pathlib.Path(parts).read_bytes()
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.truncate(SIZE)             # zeros: the padding between tensors
        target = GGUFReader(tmp, "r+")
        raw = target.data.reshape(-1)    # the whole file, writable
        stored = memoryview(blob)[target.data_offset:]
        raw[target.data_offset:target.data_offset + len(stored)] = 0
        source = {t.name: t for t in GGUFReader(q4_1).tensors}
        for t in target.tensors:
            kind = _type_name(t)
            dst = np.asarray(t.data).reshape(-1).view(np.uint8)
            if kind in STORED_TYPES:
                dst[:] = np.frombuffer(stored[:t.n_bytes], np.uint8)
                stored = stored[t.n_bytes:]
                continue
            src = source[t.name]
            values = quants.dequantize(np.asarray(src.data), GGMLQuantizationType(int(src.tensor_type)))
            values = values.astype(np.float32)
            if kind != "F32":
                values = quants.quantize(values, GGMLQuantizationType[kind])
            dst[:] = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        if len(stored):
            raise ValueError(f"{parts}: {len(stored)} bytes of K-quant data left over")
        raw.flush()
        del raw, target
        digest = sha256(tmp)
        if digest != SHA256:
            raise ValueError(f"rebuilt Q4_K_M has sha256 {digest}, expected {SHA256}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["split"] and len(sys.argv) == 4:
        split(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["rebuild"] and len(sys.argv) == 5:
        print(rebuild(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(__doc__)
