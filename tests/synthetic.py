"""Tiny random-weight LLaMA-family GGUFs for tests, written with gguf.GGUFWriter.

arch="llama" (the default) or arch="qwen2": qwen2 files carry `qwen2.*` metadata,
F32 Q/K/V biases and the `qwen2` pre-tokenizer, add no BOS, and default to an
untied output matrix, as the Qwen2.5 GGUFs do (their RoPE form, NeoX, is implied
by the architecture, not stored).

Weights are Gaussian with fan-in scaling, so hidden states and logits are O(1)
and vary between tokens. F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 are made by
gguf.quants.quantize; the K-quants (Q4_K, Q5_K, Q6_K), which gguf cannot make,
are built block by block from random quants with sane fp16 scales chosen so
the de-quantized values have zero mean and the wanted spread.

The vocabulary is complete and valid for llama.cpp-style tokenizers:
"gpt2": byte-level BPE (256 byte tokens, merges and their tokens, specials);
"llama": SentencePiece (<unk>, <s>, </s>, 256 <0xNN> byte tokens, pieces with scores).
"""
from __future__ import annotations

import fnmatch
import pathlib

import numpy as np
import gguf

Q = gguf.GGMLQuantizationType
QK_K = 256

# words whose spellings become merges / pieces, so common text tokenizes into few tokens
WORDS = (
    "the of and to in is was for that on as with by he at from his it an were are which "
    "this be or has had first one their its new after who they have her she two been other "
    "when there all during into school time may years more most only over city some world "
    "would where later up such used many can state about national out known university "
    "united then made hello world capital france paris once upon little water boils "
    "temperature colors primary three def return print import class self none true false"
).split()


# ---- tokenizer vocabularies ------------------------------------------------

def gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte 0..255."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _merge_chain(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build word from its characters: (w0, w1), (w0w1, w2), ..."""
    return [(word[:i], word[i]) for i in range(1, len(word))]


def _extra_merges():
    """Endless supply of merges for padding: two-letter then three-letter lowercase strings."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            yield a, b
    for a in letters:
        for b in letters:
            for c in letters:
                yield a + b, c


def gpt2_vocab(n_vocab: int | None):
    """(tokens, token_types, merges, bos, eos) of a byte-level BPE vocabulary."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bytes_ = gpt2_byte_chars()
    tokens = specials + bytes_
    types = [gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * 256
    known = set(tokens)
    merges: list[str] = []
    space = bytes_[ord(" ")]   # "Ġ"

    def add(a: str, b: str) -> bool:
        if a + b in known or a not in known or b not in known:
            return False
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        types.append(gguf.TokenType.NORMAL)
        known.add(a + b)
        return True

    def full() -> bool:
        return n_vocab is not None and len(tokens) >= n_vocab

    for word in WORDS:
        for a, b in _merge_chain(space + word) + _merge_chain(word):
            if full():
                break
            add(a, b)
    if n_vocab is not None:
        pad = _extra_merges()
        while not full():
            add(*next(pad))
    return tokens, types, merges, 1, 2


def llama_vocab(n_vocab: int | None):
    """(tokens, scores, token_types) of a SentencePiece vocabulary (ids 0/1/2 = unk/bos/eos)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    known = set(tokens)
    pieces: list[str] = []
    for ch in "▁" + "etaoinshrdlcumwfgypbvkjxqz" + "ETAOINSHRDLCUMWFGYPBVKJXQZ" + "0123456789" + ".,!?'\"-:;()":
        pieces.append(ch)
    for word in WORDS:
        for a, b in _merge_chain("▁" + word) + _merge_chain(word):
            pieces.append(a + b)
    pad = _extra_merges()
    out = []
    for p in pieces:
        if p not in known:
            known.add(p)
            out.append(p)
    while n_vocab is not None and len(tokens) + len(out) < n_vocab:
        a, b = next(pad)
        if a + b not in known:
            known.add(a + b)
            out.append(a + b)
    if n_vocab is not None:
        out = out[:max(0, n_vocab - len(tokens))]
    # longer pieces later with lower scores; every piece is reachable by pairwise merges
    for i, p in enumerate(out):
        tokens.append(p)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-float(i))
    return tokens, scores, types


# ---- weights -----------------------------------------------------------------

def _f16(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins per block into 12 bytes (Q4_K/Q5_K layout)."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _random_k_blocks(rng: np.random.Generator, qtype, n_blocks: int, std: float) -> np.ndarray:
    """n_blocks random K-quant blocks whose values have mean ~0 and spread ~std."""
    if qtype == Q.Q4_K or qtype == Q.Q5_K:
        bits = 4 if qtype == Q.Q4_K else 5
        half = (2 ** bits - 1) / 2.0           # mean of a uniform quant
        max_sc = 8 if bits == 4 else 4         # so that min = half * sc fits in 6 bits
        sc = rng.integers(1, max_sc + 1, size=(n_blocks, 8))
        mn = np.rint(sc * half).astype(np.int64)
        sc_mean = (1 + max_sc) / 2.0
        d = std / (sc_mean * (2 ** bits) / np.sqrt(12.0))
        d = d * np.exp(rng.normal(0.0, 0.2, size=n_blocks))   # vary the scale a little per block
        parts = [_f16(d), _f16(d), _pack_k_scales(sc, mn)]
        if bits == 5:
            parts.append(rng.integers(0, 256, size=(n_blocks, QK_K // 8), dtype=np.uint8))  # qh
        parts.append(rng.integers(0, 256, size=(n_blocks, QK_K // 2), dtype=np.uint8))      # qs
        return np.concatenate(parts, axis=1)
    if qtype == Q.Q6_K:
        ql = rng.integers(0, 256, size=(n_blocks, QK_K // 2), dtype=np.uint8)
        qh = rng.integers(0, 256, size=(n_blocks, QK_K // 4), dtype=np.uint8)
        mag = rng.integers(4, 17, size=(n_blocks, QK_K // 16))
        sign = rng.choice(np.array([-1, 1]), size=mag.shape)
        scales = (mag * sign).astype(np.int8).view(np.uint8)
        d = std / (10.0 * 64 / np.sqrt(12.0))
        d = d * np.exp(rng.normal(0.0, 0.2, size=n_blocks))
        return np.concatenate([ql, qh, scales, _f16(d)], axis=1)
    raise ValueError(f"no random block maker for {qtype.name}")


K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def encode_tensor(rng: np.random.Generator, w: np.ndarray, type_name: str, name: str = "tensor"):
    """(data, raw_dtype) for GGUFWriter.add_tensor: w (rows, cols) stored as type_name.

    For K-quants w only gives the shape and spread; the blocks are random.
    """
    if type_name not in SUPPORTED:
        raise ValueError(f"unsupported weight type {type_name!r} (one of {', '.join(SUPPORTED)})")
    qtype = Q[type_name]
    if qtype == Q.F32:
        return np.ascontiguousarray(w, dtype=np.float32), None
    if qtype == Q.F16:
        return np.ascontiguousarray(w, dtype=np.float16), None
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if w.shape[-1] % block != 0:
        raise ValueError(f"{name}: row length {w.shape[-1]} is not a multiple of the "
                         f"{type_name} block size {block}")
    if qtype in K_QUANTS:
        rows, cols = w.shape
        std = float(w.std())
        blocks = _random_k_blocks(rng, qtype, rows * cols // block, std)
        return blocks.reshape(rows, -1), qtype
    return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype), qtype


def _type_for(name: str, weight_type, tensor_types) -> str:
    if tensor_types:
        for pattern, t in tensor_types.items():
            if fnmatch.fnmatchcase(name, pattern):
                return t
    if isinstance(weight_type, dict):
        for pattern, t in weight_type.items():
            if pattern != "*" and fnmatch.fnmatchcase(name, pattern):
                return t
        return weight_type.get("*", "F32")
    return weight_type


def write_llama_gguf(path, *, n_vocab: int | None = None, n_embd: int = 64, n_layer: int = 2,
                     n_head: int = 4, n_head_kv: int | None = None, n_ff: int | None = None,
                     n_ctx: int = 256, rope_base: float = 10000.0, n_rot: int | None = None,
                     rope_scale: float | None = None, tied_output: bool | None = None,
                     weight_type="F32", tensor_types: dict | None = None, seed: int = 0,
                     tokenizer: str = "gpt2", eps: float = 1e-5, name: str | None = None,
                     arch: str = "llama", bias_std: float = 0.5, chat_template: str | None = None):
    """Write a random-weight LLaMA-family GGUF and return its path.

    arch: "llama" or "qwen2" (Q/K/V biases with spread bias_std).
    tied_output: output projection = token embedding (default: True for llama,
    False for qwen2).

    n_vocab: vocabulary size (None: the base vocabulary, 384 tokens for gpt2, about
    480 for llama); must be at least the base (259 + specials) tokens.
    weight_type: type of every 2-D weight ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1",
    "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"), or a dict {fnmatch pattern: type} with "*"
    as the default; tensor_types: {pattern: type} overrides on top (e.g.
    {"blk.*.ffn_down.weight": "Q6_K"}). Norm weights are always F32.
    rope_scale: linear RoPE scaling factor (positions are divided by it).
    """
    path = pathlib.Path(path)
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', not {arch!r}")
    qkv_bias = arch == "qwen2"
    tied_output = (arch == "llama") if tied_output is None else tied_output
    name = f"synthetic-{arch}" if name is None else name
    rng = np.random.default_rng(seed)
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    n_ff = 3 * n_embd if n_ff is None else n_ff
    if n_embd % n_head != 0 or n_head % n_head_kv != 0:
        raise ValueError(f"n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv} do not divide")
    head_dim = n_embd // n_head
    n_rot = head_dim if n_rot is None else n_rot
    if n_rot % 2 != 0 or n_rot > head_dim:
        raise ValueError(f"n_rot {n_rot} must be even and at most head_dim {head_dim}")

    # vocabulary
    if tokenizer == "gpt2":
        tokens, types, merges, bos, eos = gpt2_vocab(384 if n_vocab is None else n_vocab)
        scores = None
    elif tokenizer == "llama":
        tokens, scores, types = llama_vocab(n_vocab)
        merges, bos, eos = None, 1, 2
    else:
        raise ValueError(f"tokenizer must be 'gpt2' or 'llama', not {tokenizer!r}")
    if n_vocab is not None and len(tokens) != n_vocab:
        raise ValueError(f"n_vocab {n_vocab} is below the minimum vocabulary of {len(tokens)} tokens")
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_base)
    w.add_rope_dimension_count(n_rot)
    if rope_scale is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_scale)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model(tokenizer)
    if tokenizer == "gpt2":
        w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
        w.add_token_list(tokens)
        w.add_token_types([int(t) for t in types])
        w.add_token_merges(merges)
        w.add_add_bos_token(False)
    else:
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types([int(t) for t in types])
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def gauss(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def matrix(tname, rows, cols, std):
        t = _type_for(tname, weight_type, tensor_types)
        data, raw = encode_tensor(rng, gauss(rows, cols, std), t, tname)
        w.add_tensor(tname, data, raw_dtype=raw)

    def bias(tname, rows):
        w.add_tensor(tname, (bias_std * rng.standard_normal(rows)).astype(np.float32))

    def norm(tname):
        w.add_tensor(tname, (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))

    out_std = 2.0 / np.sqrt(n_embd)   # logits of std ~2 after the final norm
    matrix("token_embd.weight", n_vocab, n_embd, out_std if tied_output else 1.0)
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight")
        for short, rows in (("q", n_head * head_dim), ("k", n_head_kv * head_dim), ("v", n_head_kv * head_dim)):
            matrix(p + f"attn_{short}.weight", rows, n_embd, 1.0 / np.sqrt(n_embd))
            if qkv_bias:
                bias(p + f"attn_{short}.bias", rows)
        matrix(p + "attn_output.weight", n_embd, n_head * head_dim, 0.5 / np.sqrt(n_head * head_dim))
        norm(p + "ffn_norm.weight")
        matrix(p + "ffn_gate.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        matrix(p + "ffn_up.weight", n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        matrix(p + "ffn_down.weight", n_embd, n_ff, 0.5 / np.sqrt(n_ff))
    norm("output_norm.weight")
    if not tied_output:
        matrix("output.weight", n_vocab, n_embd, out_std)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
