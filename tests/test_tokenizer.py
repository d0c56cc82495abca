"""Tokenizer ids against llama.cpp's: its vocabulary test pairs, SmolLM2 reference
ids, special tokens, detokenization, UTF-8 streaming and metadata validation."""
from __future__ import annotations

import codecs
import functools
import json
import pathlib
import time

import pytest

gguf = pytest.importorskip("gguf")
from ffnskip import _core  # noqa: E402

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
VOCAB_DIR = DATA_DIR / "vocab"
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_cases():
    """(vocab file, index, text, expected ids) for every llama.cpp test pair."""
    vocab_dir = VOCAB_DIR
    cases = []
    for path in sorted(vocab_dir.glob("ggml-vocab-*.gguf")):
        inp = pathlib.Path(str(path) + ".inp").read_text(encoding="utf-8")
        out = pathlib.Path(str(path) + ".out").read_text(encoding="utf-8")
        texts = inp.split(SEPARATOR)
        assert texts[-1] == "", f"{path.name}.inp should end with the separator"
        texts = texts[:-1]
        lines = out.split("\n")
        assert len(lines) >= len(texts)
        for i, text in enumerate(texts):
            ids = [int(x) for x in lines[i].split()]
            name = path.name[len("ggml-vocab-"):-len(".gguf")]
            cases.append(pytest.param(path, i, text, ids, id=f"{name}-{i}"))
    return cases


_tokenizers: dict = {}


def tokenizer(path) -> "_core.Tokenizer":
    if path not in _tokenizers:
        _tokenizers[path] = _core.Tokenizer(str(path))
    return _tokenizers[path]


@functools.lru_cache(maxsize=None)
def gguf_vocab(path) -> tuple[dict, dict]:
    """Token text -> id, and the scalar tokenizer metadata, read with the gguf package."""
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["tokenizer.ggml.tokens"]
    ids = {}
    for i, idx in enumerate(field.data):
        ids.setdefault(bytes(field.parts[idx]).decode("utf-8"), i)
    scalars = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_id"):
            scalars[key] = int(f.parts[f.data[0]][0])
    return ids, scalars


def token_id(path, text: str) -> int:
    return gguf_vocab(path)[0][text]


def metadata(path, key):
    return gguf_vocab(path)[1][key]


@pytest.mark.parametrize("path,index,text,ids", vocab_cases())
def test_vocab_ids_match_llama_cpp(path, index, text, ids):
    assert tokenizer(path).tokenize(text, add_special=False, parse_special=False) == ids


def clean_spaces(text: str) -> str:
    """llama.cpp's clean_up_tokenization_spaces (three passes over the bytes)."""
    out = []
    for i, ch in enumerate(text):
        if i > 0 and text[i - 1] == " " and ch in "?!.,":
            out.pop()
        out.append(ch)
    a = out
    b = []
    i = 0
    while i < len(a):
        ch = a[i]
        if i > 0 and ch == "'" and i + 1 < len(a) and a[i - 1] == " " and a[i + 1] == " ":
            b.pop()
            b.append(ch)
            a[i + 1] = "\0"
            i += 2
            continue
        b.append(ch)
        i += 1
    c = []
    for i, ch in enumerate(b):
        if i > 0 and b[i - 1] == " " and ch == "'" and i + 1 < len(b):
            x1 = b[i + 1]
            if x1 in "sm" or (i + 2 < len(b) and (x1 + b[i + 2]) in ("re", "ve")):
                c.pop()
        c.append(ch)
    return "".join(c)


CLEAN_SPACES = {"gpt-2", "llama-bpe", "starcoder"}   # pre-tokenizers llama.cpp cleans spaces for


@pytest.mark.parametrize("path,index,text,ids", vocab_cases())
def test_vocab_round_trip(path, index, text, ids):
    tok = tokenizer(path)
    name = path.name[len("ggml-vocab-"):-len(".gguf")]
    expected = clean_spaces(text) if name in CLEAN_SPACES else text
    assert tok.detokenize(ids, render_special=True) == expected


def test_vocab_files_all_present():
    names = {p.name for p in VOCAB_DIR.glob("ggml-vocab-*.gguf")}
    assert {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf"} <= names


# ---- SmolLM2 (gpt2 BPE, pre-tokenizer smollm) -----------------------------------------

@pytest.fixture(scope="module")
def smollm2_vocab_path(smollm2_q4_k_m) -> pathlib.Path:
    return smollm2_q4_k_m


def check_reference_ids(tok):
    ref = json.loads((DATA_DIR / "reference" / "tokenize_q4_1.json").read_text(encoding="utf-8"))
    assert ref["items"]
    for item in ref["items"]:
        assert tok.tokenize(item["text"]) == item["ids"], item["text"]
        assert tok.detokenize(item["ids"]) == item["text"]


@pytest.mark.slow
def test_smollm2_reference_ids(smollm2_vocab_path):
    tok = tokenizer(smollm2_vocab_path)
    assert (tok.model, tok.pre) == ("gpt2", "smollm")
    assert tok.add_bos is False   # add_bos_token = false: no BOS
    check_reference_ids(tok)


@pytest.mark.slow
def test_smollm2_q4_1_reference_ids():
    try:
        from ffnskip import models
        path = models.default_model_path()
    except Exception as e:  # noqa: BLE001 - any failure to fetch means: not available here
        pytest.skip(f"SmolLM2 Q4_1 model not available: {e}")
    check_reference_ids(_core.Tokenizer(str(path)))


@pytest.mark.slow
def test_smollm2_long_text_ids_and_speed(smollm2_vocab_path):
    tok = tokenizer(smollm2_vocab_path)
    ref = json.loads((DATA_DIR / "reference" / "ppl_text_tokens.json").read_text(encoding="utf-8"))
    text = (DATA_DIR / "reference" / "ppl_text.txt").read_text(encoding="utf-8")
    start = time.perf_counter()
    ids = tok.tokenize(text)
    elapsed = time.perf_counter() - start
    assert len(ids) == ref["n_tokens"] == 28625
    assert ids == ref["ids"]
    assert elapsed < 1.0, f"tokenizing {len(text)} characters took {elapsed:.2f} s"
    assert tok.detokenize(ids) == text


@pytest.mark.slow
def test_smollm2_special_tokens(smollm2_vocab_path):
    path = smollm2_vocab_path
    tok = tokenizer(path)
    im_start, im_end = token_id(path, "<|im_start|>"), token_id(path, "<|im_end|>")
    text = "<|im_start|>user\nHi<|im_end|>"
    parsed = tok.tokenize(text, add_special=False, parse_special=True)
    assert parsed == [im_start] + tok.tokenize("user\nHi", False, False) + [im_end]
    plain = tok.tokenize(text, add_special=False, parse_special=False)
    assert im_start not in plain and im_end not in plain
    assert tok.detokenize(plain) == text
    # control tokens render only when asked
    assert tok.token_to_piece(im_end, render_special=True) == b"<|im_end|>"
    assert tok.token_to_piece(im_end, render_special=False) == b""
    assert tok.detokenize(parsed, render_special=False) == "user\nHi"
    # end of generation: EOS and the chat end tokens
    assert tok.is_eog(im_end)
    assert tok.is_eog(token_id(path, "<|endoftext|>"))
    assert tok.is_eog(tok.eos)
    assert not tok.is_eog(im_start)
    assert not tok.is_eog(tok.tokenize("Hello", False)[0])
    assert tok.eos == metadata(path, "tokenizer.ggml.eos_token_id")
    assert tok.n_vocab == 49152


@pytest.mark.slow
def test_token_to_piece_bytes(smollm2_vocab_path):
    tok = tokenizer(smollm2_vocab_path)
    ids = tok.tokenize("naïve — ok")
    pieces = b"".join(tok.token_to_piece(i) for i in ids)
    assert pieces == "naïve — ok".encode("utf-8")
    with pytest.raises((ValueError, IndexError)):
        tok.token_to_piece(tok.n_vocab)


# ---- SentencePiece (llama) ------------------------------------------------------------------

def spm_path() -> pathlib.Path:
    return VOCAB_DIR / "ggml-vocab-llama-spm.gguf"


def test_spm_bos_and_space_prefix():
    path = spm_path()
    tok = tokenizer(path)
    assert tok.model == "llama"
    assert tok.add_bos   # llama.cpp's default for SentencePiece vocabularies
    bos = metadata(path, "tokenizer.ggml.bos_token_id")
    assert tok.bos == bos
    ids = tok.tokenize("Hello world", add_special=True)
    assert ids[0] == bos and ids[1:] == tok.tokenize("Hello world", add_special=False)
    assert tok.tokenize("", add_special=True) == [bos]
    assert tok.tokenize("", add_special=False) == []
    # the leading space the prefix adds is dropped again; BOS renders as its text
    assert tok.detokenize(tok.tokenize(" Hello", add_special=False)) == " Hello"
    assert tok.detokenize(ids, render_special=False) == " Hello world"   # a BOS keeps the space
    assert tok.detokenize(ids[1:]) == "Hello world"


def test_spm_byte_fallback():
    path = spm_path()
    tok = tokenizer(path)
    text = "\U0001F9FF"   # not in the vocabulary: four byte tokens
    ids = tok.tokenize(text, add_special=False)
    byte_ids = [token_id(path, f"<0x{b:02X}>") for b in text.encode("utf-8")]
    assert ids[-4:] == byte_ids
    assert tok.detokenize(ids) == text


# ---- UTF-8 streaming ----------------------------------------------------------------------------

STREAM_TEXTS = ["é", "naïve café", "€100", "日本語のテキスト", "🦙 llama 🦙", "a\u0301\u00e9\U0010FFFF"]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_utf8_stream_every_split(text):
    data = text.encode("utf-8")
    for cut in range(len(data) + 1):
        s = _core._Utf8Stream()
        oracle = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = s.push(data[:cut])
        assert first == oracle.decode(data[:cut]), cut
        assert "\ufffd" not in first
        second = s.push(data[cut:])
        assert second == oracle.decode(data[cut:]), cut
        assert first + second + s.flush() == text


def test_utf8_stream_byte_by_byte():
    text = "¡Hola! ¿Qué tal? 👋🏽 — 東京"
    s = _core._Utf8Stream()
    oracle = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = ""
    for b in text.encode("utf-8"):
        got = s.push(bytes([b]))
        assert got == oracle.decode(bytes([b]))
        out += got
    assert out + s.flush() == text


@pytest.mark.parametrize("data", [b"\xff", b"a\xe2\x82b", b"\xc0\xaf", b"\xed\xa0\x80x", b"\xf0\x9f\x98", b"\x80\x80"])
def test_utf8_stream_invalid_bytes(data):
    s = _core._Utf8Stream()
    got = s.push(data) + s.flush()
    assert got == data.decode("utf-8", errors="replace")


# ---- metadata validation ----------------------------------------------------------------------

def write_vocab(path, model="gpt2", pre="gpt-2", tokens=None, merges=None, scores=None, types=None, extra=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    tokens = tokens if tokens is not None else ["a", "b", "c", "ab", "abc"]
    w.add_token_list(tokens)
    w.add_token_types(types if types is not None else [1] * len(tokens))
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None or model == "gpt2":
        w.add_token_merges(merges if merges is not None else ["a b", "ab c"])
    for key, value in (extra or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_bpe_vocab(tmp_path):
    tok = _core.Tokenizer(str(write_vocab(tmp_path / "v.gguf")))
    assert (tok.model, tok.pre, tok.n_vocab) == ("gpt2", "gpt-2", 5)
    # merges by rank: a+b first, then ab+c
    assert tok.tokenize("abc", add_special=False) == [4]
    assert tok.tokenize("cab", add_special=False) == [2, 3]
    assert tok.tokenize("ba", add_special=False) == [1, 0]


def test_unknown_pre_tokenizer_is_an_error(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", pre="no-such-pre")
    with pytest.raises(_core.FormatError, match="no-such-pre"):
        _core.Tokenizer(str(path))


def test_unknown_tokenizer_model_is_an_error(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", model="wordpiece-x", pre=None)
    with pytest.raises(_core.FormatError, match="wordpiece-x"):
        _core.Tokenizer(str(path))


def test_inconsistent_arrays_are_an_error(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", types=[1, 1, 1])
    with pytest.raises(_core.FormatError, match="token_type"):
        _core.Tokenizer(str(path))
    path = write_vocab(tmp_path / "w.gguf", model="llama", pre=None, scores=[0.0, 1.0])
    with pytest.raises(_core.FormatError, match="scores"):
        _core.Tokenizer(str(path))


def test_special_id_out_of_range_is_an_error(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", extra={"tokenizer.ggml.eos_token_id": 99})
    with pytest.raises(_core.FormatError, match="eos_token_id"):
        _core.Tokenizer(str(path))


def test_missing_merges_is_an_error(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(_core.FormatError, match="merges"):
        _core.Tokenizer(str(tmp_path / "v.gguf"))


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        _core.Tokenizer(str(DATA_DIR / "no-such-vocab.gguf"))
