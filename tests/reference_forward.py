"""Pure-numpy LLaMA-family forward pass: the test oracle for logits.

Independent of the engine: weights are read and de-quantized with the `gguf`
package (float32), and every step is written out plainly in numpy. It follows
llama.cpp's conventions for `llama` and `qwen2` architecture GGUFs:
- llama: the converter already permuted the Q/K rows, so RoPE rotates adjacent
  pairs (x[2i], x[2i+1]) of the first n_rot dims of a head ("normal" mode);
- qwen2: Q/K/V projections add a bias vector (`blk.N.attn_q.bias` ...), and RoPE
  rotates the pairs (x[i], x[i + n_rot/2]) ("NeoX" mode); metadata keys `qwen2.*`;
- GGUF lists dimensions innermost first, so a tensor of GGUF shape [cols, rows]
  is a numpy (rows, cols) matrix and y = W @ x;
- the output projection is `output.weight`, or the token embedding when tied.
With kv_f16=True the K/V cache is rounded to float16 like llama.cpp's default
F16 KV cache (and Q too, which llama.cpp converts to F16 for the K.Q product).
"""
from __future__ import annotations

import math

import numpy as np
import gguf


def _field(reader: gguf.GGUFReader, key: str, default=None):
    """Scalar, string or array value of a metadata key (default when absent)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    if hasattr(f, "contents"):
        return f.contents()
    # older gguf: decode by hand
    vals = [f.parts[i] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(v).decode("utf-8") for v in vals]
        return [v.tolist()[0] for v in vals]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(vals[0]).decode("utf-8")
    return vals[0].tolist()[0]


def dequantize_tensor(t) -> np.ndarray:
    """float32 copy of a reader tensor in numpy order (outermost dim first)."""
    shape = tuple(int(d) for d in reversed(t.shape))
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(w, dtype=np.float32).reshape(shape)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)).astype(np.float32) * w


def silu(x: np.ndarray) -> np.ndarray:
    # x * sigmoid(x), with sigmoid via tanh so large |x| cannot overflow
    x64 = x.astype(np.float64)
    return (x64 * 0.5 * (1.0 + np.tanh(0.5 * x64))).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class ReferenceModel:
    """LLaMA forward with a KV cache held in the object.

    forward(tokens, start_pos) -> logits (n, n_vocab) float32 for every given position.
    """

    def __init__(self, path, *, kv_f16: bool = False):
        reader = gguf.GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
        if arch not in ("llama", "qwen2"):
            raise ValueError(f"reference forward supports the llama and qwen2 architectures, not {arch!r}")
        a = arch + "."
        self.arch = arch
        self.rope_neox = arch == "qwen2"
        self.path = str(path)
        self.kv_f16 = kv_f16
        self.n_layer = int(_field(reader, a + "block_count"))
        self.n_embd = int(_field(reader, a + "embedding_length"))
        self.n_ff = int(_field(reader, a + "feed_forward_length"))
        self.n_head = int(_field(reader, a + "attention.head_count"))
        self.n_head_kv = int(_field(reader, a + "attention.head_count_kv", self.n_head))
        self.n_ctx_train = int(_field(reader, a + "context_length", 0))
        self.eps = float(_field(reader, a + "attention.layer_norm_rms_epsilon", 1e-5))
        self.head_dim_k = int(_field(reader, a + "attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(_field(reader, a + "attention.value_length", self.n_embd // self.n_head))
        self.n_rot = int(_field(reader, a + "rope.dimension_count", self.head_dim_k))
        self.rope_base = float(_field(reader, a + "rope.freq_base", 10000.0))
        scaling = _field(reader, a + "rope.scaling.type", "none")
        factor = float(_field(reader, a + "rope.scaling.factor", 0.0) or 0.0)
        if scaling == "none" and _field(reader, a + "rope.scale_linear") is not None:
            scaling, factor = "linear", float(_field(reader, a + "rope.scale_linear"))
        if scaling == "linear" and factor > 0.0:
            self.freq_scale = 1.0 / factor
        elif scaling in ("none", "linear"):
            self.freq_scale = 1.0
        else:
            raise ValueError(f"rope scaling type {scaling!r} is not supported by the reference")
        self.eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
        if self.n_head % self.n_head_kv != 0:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_head_kv {self.n_head_kv}")

        # every tensor de-quantized to float32, numpy order
        self.w = {t.name: dequantize_tensor(t) for t in reader.tensors}
        self.tok_embd = self.w["token_embd.weight"]          # (n_vocab, n_embd)
        self.output = self.w.get("output.weight", self.tok_embd)  # (n_vocab, n_embd), tied if absent
        self.output_norm = self.w["output_norm.weight"]      # (n_embd,)
        self.n_vocab = self.tok_embd.shape[0]
        self.layers = []
        for il in range(self.n_layer):
            p = f"blk.{il}."
            if arch == "qwen2":
                missing = [p + f"attn_{x}.bias" for x in "qkv" if p + f"attn_{x}.bias" not in self.w]
                if missing:
                    raise ValueError(f"qwen2 model without {', '.join(missing)}")
            self.layers.append({
                "bq": self.w.get(p + "attn_q.bias"),           # (n_head * head_dim_k,) or None
                "bk": self.w.get(p + "attn_k.bias"),           # (n_head_kv * head_dim_k,) or None
                "bv": self.w.get(p + "attn_v.bias"),           # (n_head_kv * head_dim_v,) or None
                "attn_norm": self.w[p + "attn_norm.weight"],   # (n_embd,)
                "wq": self.w[p + "attn_q.weight"],             # (n_head * head_dim_k, n_embd)
                "wk": self.w[p + "attn_k.weight"],             # (n_head_kv * head_dim_k, n_embd)
                "wv": self.w[p + "attn_v.weight"],             # (n_head_kv * head_dim_v, n_embd)
                "wo": self.w[p + "attn_output.weight"],        # (n_embd, n_head * head_dim_v)
                "ffn_norm": self.w[p + "ffn_norm.weight"],     # (n_embd,)
                "w_gate": self.w[p + "ffn_gate.weight"],       # (n_ff, n_embd)
                "w_up": self.w[p + "ffn_up.weight"],           # (n_ff, n_embd)
                "w_down": self.w[p + "ffn_down.weight"],       # (n_embd, n_ff)
            })
        del reader
        self.reset()

    # ---- KV cache ----------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache."""
        self.n_past = 0
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim_k), np.float32) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim_v), np.float32) for _ in range(self.n_layer)]

    def _store(self, il: int, start_pos: int, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[0]
        kc, vc = self.k_cache[il], self.v_cache[il]
        if kc.shape[0] < start_pos + n:  # grow (amortised doubling)
            cap = max(start_pos + n, 2 * kc.shape[0], 64)
            kc = np.concatenate([kc, np.zeros((cap - kc.shape[0],) + kc.shape[1:], np.float32)])
            vc = np.concatenate([vc, np.zeros((cap - vc.shape[0],) + vc.shape[1:], np.float32)])
        if self.kv_f16:
            k = k.astype(np.float16).astype(np.float32)
            v = v.astype(np.float16).astype(np.float32)
        kc[start_pos:start_pos + n] = k
        vc[start_pos:start_pos + n] = v
        self.k_cache[il], self.v_cache[il] = kc, vc

    # ---- building blocks ---------------------------------------------------

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """RoPE on the first n_rot dims of each head: pair i is (x[2i], x[2i+1]) in
        llama.cpp's "normal" mode, (x[i], x[i + n_rot/2]) in NeoX mode (qwen2).

        x: (n, n_heads, head_dim), pos: (n,). theta = pos * freq_scale * base^(-2i/n_rot).
        """
        half = self.n_rot // 2
        inv_freq = self.rope_base ** (-2.0 * np.arange(half, dtype=np.float64) / self.n_rot)
        theta = (pos.astype(np.float64)[:, None] * self.freq_scale) * inv_freq[None, :]  # (n, half)
        cos = np.cos(theta).astype(np.float32)[:, None, :]
        sin = np.sin(theta).astype(np.float32)[:, None, :]
        out = x.copy()
        if self.rope_neox:
            first, second = slice(0, half), slice(half, self.n_rot)
        else:
            first, second = slice(0, self.n_rot, 2), slice(1, self.n_rot, 2)
        x0 = x[..., first]
        x1 = x[..., second]
        out[..., first] = x0 * cos - x1 * sin
        out[..., second] = x0 * sin + x1 * cos
        return out

    def attention(self, il: int, q: np.ndarray, start_pos: int) -> np.ndarray:
        """Causal softmax attention over the cache. q: (n, n_head, head_dim_k) -> (n, n_head * head_dim_v)."""
        n = q.shape[0]
        n_kv = start_pos + n
        k = self.k_cache[il][:n_kv]                  # (n_kv, n_head_kv, head_dim_k)
        v = self.v_cache[il][:n_kv]                  # (n_kv, n_head_kv, head_dim_v)
        if self.kv_f16:
            q = q.astype(np.float16).astype(np.float32)
        group = self.n_head // self.n_head_kv
        scale = 1.0 / math.sqrt(self.head_dim_k)
        # query i sits at position start_pos + i and sees keys 0 .. start_pos + i
        mask = np.arange(n_kv)[None, :] > (start_pos + np.arange(n))[:, None]  # (n, n_kv)
        out = np.empty((n, self.n_head, self.head_dim_v), np.float32)
        for h in range(self.n_head):
            hk = h // group                          # GQA: consecutive query heads share a KV head
            s = (q[:, h, :] @ k[:, hk, :].T) * np.float32(scale)   # (n, n_kv)
            s = np.where(mask, -np.inf, s)
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            out[:, h, :] = p @ v[:, hk, :]
        return out.reshape(n, self.n_head * self.head_dim_v)

    # ---- forward -------------------------------------------------------------

    def forward(self, tokens, start_pos: int | None = None) -> np.ndarray:
        """Run tokens at positions start_pos.. (default: after the cache); logits (n, n_vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if start_pos is None:
            start_pos = self.n_past
        if start_pos > self.n_past:
            raise ValueError(f"start_pos {start_pos} leaves a hole after {self.n_past} cached positions")
        if tokens.size == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError(f"token id out of range [0, {self.n_vocab})")
        n = tokens.size
        pos = np.arange(start_pos, start_pos + n)
        x = self.tok_embd[tokens].astype(np.float32)       # (n, n_embd)
        for il, L in enumerate(self.layers):
            # attention block
            h = rms_norm(x, L["attn_norm"], self.eps)
            q, k, v = h @ L["wq"].T, h @ L["wk"].T, h @ L["wv"].T
            if L["bq"] is not None:
                q, k, v = q + L["bq"], k + L["bk"], v + L["bv"]
            q = q.reshape(n, self.n_head, self.head_dim_k)
            k = k.reshape(n, self.n_head_kv, self.head_dim_k)
            v = v.reshape(n, self.n_head_kv, self.head_dim_v)
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            self._store(il, start_pos, k, v)
            x = x + self.attention(il, q, start_pos) @ L["wo"].T
            # feed-forward block (SwiGLU)
            h = rms_norm(x, L["ffn_norm"], self.eps)
            x = x + (silu(h @ L["w_gate"].T) * (h @ L["w_up"].T)) @ L["w_down"].T
        self.n_past = start_pos + n
        x = rms_norm(x, self.output_norm, self.eps)
        return (x @ self.output.T).astype(np.float32)

    # ---- helpers -------------------------------------------------------------

    def greedy(self, prompt_ids, n: int, stop_ids=None) -> list[int]:
        """Greedy continuation (ties -> lowest id) of n tokens from a fresh cache.

        Stops after a token in stop_ids (default: the EOS id), which is included.
        """
        if stop_ids is None:
            stop_ids = () if self.eos_id is None else (int(self.eos_id),)
        stop_ids = set(int(t) for t in stop_ids)
        self.reset()
        logits = self.forward(prompt_ids, 0)[-1]
        out: list[int] = []
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            if tok in stop_ids or len(out) == n:
                break
            logits = self.forward([tok])[-1]
        return out

    def perplexity(self, ids, n_ctx: int, n_chunks: int | None = None) -> float:
        """Perplexity with llama.cpp's convention (llama-perplexity -c n_ctx).

        The text is cut into len(ids) // n_ctx chunks of n_ctx tokens, each run from an
        empty cache; only the second half of each chunk is scored: logits at positions
        first = n_ctx // 2 .. n_ctx - 2 predict the next token of the chunk.
        """
        ids = np.asarray(ids, dtype=np.int64)
        total = len(ids) // n_ctx
        if n_chunks is not None:
            total = min(total, n_chunks)
        if total == 0:
            raise ValueError(f"need at least {n_ctx} tokens, got {len(ids)}")
        first = n_ctx // 2
        nll, count = 0.0, 0
        for c in range(total):
            chunk = ids[c * n_ctx:(c + 1) * n_ctx]
            self.reset()
            logits = self.forward(chunk, 0)
            lp = log_softmax(logits[first:n_ctx - 1])
            tgt = chunk[first + 1:n_ctx]
            nll -= float(lp[np.arange(len(tgt)), tgt].sum())
            count += len(tgt)
        return math.exp(nll / count)
