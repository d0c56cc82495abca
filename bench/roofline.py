"""The decode roofline: this machine's memory read bandwidth, and the weight bytes a
decoder must read per generated token. roofline tokens/s = bandwidth / bytes.

Decoding one token reads every layer tensor once, the output matrix once (the token
embedding itself when the model ties them) and one row of the embedding. KV-cache
reads and activations are left out: at short contexts they are small next to the
weights, so the roofline is an upper bound.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def weight_bytes_per_token(path: str) -> dict:
    """Bytes read per decoded token from the tensors of a GGUF (via the gguf package)."""
    import gguf
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    layers = sum(int(t.n_bytes) for name, t in tensors.items() if name.startswith("blk."))
    embd = tensors["token_embd.weight"]
    n_vocab = int(embd.shape[-1])  # GGUF shape is innermost first: [n_embd, n_vocab]
    embd_row = int(embd.n_bytes) // n_vocab
    out = tensors.get("output.weight", embd)
    other = sum(int(t.n_bytes) for name, t in tensors.items()
                if not name.startswith("blk.") and name not in ("token_embd.weight", "output.weight"))
    total = layers + int(out.n_bytes) + embd_row + other
    return {"layers": layers, "output": int(out.n_bytes), "tied_output": "output.weight" not in tensors,
            "embedding_row": embd_row, "other": other, "total": total,
            "types": sorted({t.tensor_type.name for t in reader.tensors})}


def read_bandwidth(n_threads: int, mib: int = 512, reps: int = 7) -> dict:
    """Read bandwidth in bytes/s: numpy sums of a float32 array far larger than the
    caches, split into n_threads slices summed concurrently (numpy drops the GIL in
    its reduction loops). Best and median of `reps` passes."""
    a = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(a, n_threads)
    pool = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 1 else None

    def one_pass() -> float:
        t0 = time.perf_counter()
        if pool is None:
            np.add.reduce(a)
        else:
            list(pool.map(np.add.reduce, parts))
        return time.perf_counter() - t0

    one_pass()  # fault the pages in
    rates = sorted(a.nbytes / one_pass() for _ in range(reps))
    if pool is not None:
        pool.shutdown()
    return {"threads": n_threads, "array_mib": mib, "best": rates[-1], "median": rates[len(rates) // 2]}
