"""Bad input must raise a clear Python exception that names the problem.

Corrupt GGUF files are made two ways: a small hand-assembled image (every byte
known, checked against gguf.GGUFReader), and rewrites of synthetic models made
with gguf.GGUFWriter. Nothing may crash the process, nothing may hang.
"""
from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import gguf

import ffnskip
from ffnskip import _core

FormatError = ffnskip.FormatError

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
# ggml tensor types used here
T_F32, T_F16, T_Q8_0 = 0, 1, 8


# ---- raw GGUF images ------------------------------------------------------------

def enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
               BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


def enc_val(vtype: int, v) -> bytes:
    """The payload of a value (no type tag); arrays: v = (elem_type, [payloads])."""
    if vtype == STR:
        return enc_str(v)
    if vtype == ARR:
        elem, items = v
        return struct.pack("<IQ", elem, len(items)) + b"".join(items)
    return struct.pack(_SCALAR_FMT[vtype], v)


def enc_kv(key: str | bytes, vtype: int, v) -> bytes:
    return enc_str(key) + struct.pack("<I", vtype) + enc_val(vtype, v)


def enc_tensor(name: str | bytes, ne, ttype: int, offset: int) -> bytes:
    return (enc_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
            + struct.pack("<IQ", ttype, offset))


def image(kvs=(), tensors=(), data=b"", *, version=3, alignment=32, n_kv=None, n_tensors=None,
          magic=b"GGUF") -> bytes:
    """A GGUF image from encoded kv and tensor-info entries, padded to `alignment`."""
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(tensors) if n_tensors is None else n_tensors
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tensors)
    pad = (-len(head)) % alignment if alignment > 0 else 0
    return head + b"\0" * pad + data


def nested_array(depth: int) -> bytes:
    """The payload of `depth` arrays nested in each other, the innermost holding one u8."""
    v = enc_val(ARR, (U8, [b"\x07"]))
    for _ in range(depth - 1):
        v = struct.pack("<IQ", ARR, 1) + v
    return v


def small_image():
    """A valid image with every value type and two tensors; returns (bytes, sections).

    sections maps a name to the (start, end) byte range of each part of the file.
    """
    kvs = [
        enc_kv("general.architecture", STR, "llama"),
        enc_kv("test.u8", U8, 200), enc_kv("test.i8", I8, -100),
        enc_kv("test.u16", U16, 60000), enc_kv("test.i16", I16, -30000),
        enc_kv("test.u32", U32, 4_000_000_000), enc_kv("test.i32", I32, -2_000_000_000),
        enc_kv("test.f32", F32, 0.5), enc_kv("test.bool", BOOL, 1),
        enc_kv("test.u64", U64, 2**63 + 5), enc_kv("test.i64", I64, -2**62),
        enc_kv("test.f64", F64, -1.25),
        enc_kv("test.strings", ARR, (STR, [enc_str("a"), enc_str(""), enc_str("héllo")])),
        enc_kv("test.ints", ARR, (I32, [struct.pack("<i", i) for i in (-1, 0, 7)])),
        enc_kv("test.nested", ARR, (ARR, [enc_val(ARR, (U16, [struct.pack("<H", 3)])),
                                         enc_val(ARR, (U16, []))])),
        enc_kv("general.alignment", U32, 32),
    ]
    a = np.arange(16, dtype=np.float32) - 4.0
    q = bytearray()
    for blk in range(2):
        q += np.float16(0.25 * (blk + 1)).tobytes() + bytes((i * 7 + blk) % 256 for i in range(32))
    tensors = [enc_tensor("a.weight", [8, 2], T_F32, 0), enc_tensor("q.weight", [32, 2], T_Q8_0, 64)]
    data = a.tobytes() + bytes(q)
    img = image(kvs, tensors, data)

    sections = {"magic": (0, 4), "version": (4, 8), "counts": (8, 24)}
    pos = 24
    for i, kv in enumerate(kvs):
        sections[f"kv{i}"] = (pos, pos + len(kv))
        pos += len(kv)
    for i, t in enumerate(tensors):
        sections[f"tensor{i}"] = (pos, pos + len(t))
        pos += len(t)
    data_start = len(img) - len(data)
    sections["padding"] = (pos, data_start)
    sections["data"] = (data_start, len(img))
    return img, sections


def parse(data: bytes) -> dict:
    return _core._gguf_parse_bytes(data)


def write(tmp_path, data: bytes, name="bad.gguf"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---- the hand-made image is valid by an independent reader ------------------------

def test_small_image_matches_gguf_reader(tmp_path):
    img, sections = small_image()
    path = write(tmp_path, img, "small.gguf")
    r = gguf.GGUFReader(path)
    ours = _core.gguf_inspect(str(path))
    assert ours["version"] == 3
    assert ours["data_offset"] == r.data_offset == sections["data"][0]
    theirs = {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    assert ours["metadata"].keys() == theirs.keys()
    for key, v in theirs.items():
        if key == "test.nested":   # gguf's contents() flattens nested arrays
            continue
        if isinstance(v, float):
            assert ours["metadata"][key] == pytest.approx(v), key
        else:
            assert ours["metadata"][key] == v, key
    assert ours["metadata"]["test.nested"] == [[3], []]
    assert [t["name"] for t in ours["tensors"]] == [t.name for t in r.tensors]
    for mine, t in zip(ours["tensors"], r.tensors):
        assert mine["offset"] == t.data_offset
        assert mine["n_bytes"] == t.n_bytes
        assert mine["shape"] == [int(d) for d in t.shape]


# ---- files that are not GGUF at all ----------------------------------------------

def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    for call in (lambda: ffnskip.Model(str(missing)), lambda: _core.gguf_inspect(str(missing)),
                 lambda: ffnskip.Session(missing)):
        with pytest.raises(FileNotFoundError, match="nope.gguf"):
            call()


def test_directory(tmp_path):
    with pytest.raises(ffnskip.FfnskipError, match="not a regular file|directory"):
        ffnskip.Model(str(tmp_path))
    with pytest.raises(ffnskip.FfnskipError, match="not a regular file|directory"):
        _core.gguf_inspect(str(tmp_path))


def test_fifo_does_not_hang(tmp_path):
    # Opening a FIFO for reading blocks until a writer appears: the reader must refuse
    # it without opening it that way. Run in a child so a regression fails, not hangs.
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    code = ("import ffnskip._core as c, sys\n"
            "try:\n    c.gguf_inspect(sys.argv[1])\n"
            "except c.FfnskipError as e:\n    print('ERR', e)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR") and "regular file" in out.stdout


def test_path_with_nul_byte(tmp_path, synthetic_model):
    path = str(synthetic_model())
    with pytest.raises((ValueError, FileNotFoundError), match="NUL|null|no such file"):
        ffnskip.Model(path + "\0.ignored")


def test_empty_file(tmp_path):
    path = write(tmp_path, b"")
    with pytest.raises(FormatError, match="empty"):
        ffnskip.Model(str(path))
    with pytest.raises(FormatError, match="magic"):
        parse(b"")


@pytest.mark.parametrize("head", [b"GGML", b"ggjt", b"\0\0\0\0", b"FUGG", b"GGU", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, head):
    img, _ = small_image()
    data = head + img[4:] if len(head) == 4 else head
    with pytest.raises(FormatError, match="magic"):
        parse(data)
    with pytest.raises(FormatError, match="magic"):
        ffnskip.Model(str(write(tmp_path, data)))


@pytest.mark.parametrize("version, message", [
    (1, "version 1"), (0, "version 0"), (4, "version 4"), (0xFFFFFFFF, "version 4294967295"),
    (0x03000000, "big-endian"), (0x02000000, "big-endian"),
])
def test_unsupported_versions(version, message):
    img, _ = small_image()
    with pytest.raises(FormatError, match=message):
        parse(img[:4] + struct.pack("<I", version) + img[8:])


def test_version_2_is_read():
    img, _ = small_image()
    assert parse(img[:4] + struct.pack("<I", 2) + img[8:])["version"] == 2


# ---- truncation ------------------------------------------------------------------

_TRUNCATION_WORDS = re.compile(r"magic|truncated|remain|can hold|cannot fit|outside the data section")


def _check_prefix(data: bytes, n: int):
    with pytest.raises(FormatError) as e:
        parse(data[:n])
    assert _TRUNCATION_WORDS.search(str(e.value)), (n, str(e.value))


def test_truncated_small_image_at_every_offset():
    img, sections = small_image()
    assert parse(img)["tensors"][1]["n_bytes"] == 68
    for n in range(len(img)):
        _check_prefix(img, n)
    # every section was cut inside, not only at its edges
    for name, (a, b) in sections.items():
        assert b > a, name


def _header_and_tensors(path):
    r = gguf.GGUFReader(path)
    return r, r.data_offset, [(t.data_offset, t.n_bytes) for t in r.tensors]


def test_truncated_synthetic_model(tmp_path, synthetic_model):
    path = synthetic_model(weight_type="Q8_0")
    data = path.read_bytes()
    r, data_offset, spans = _header_and_tensors(path)
    assert parse(data)["data_offset"] == data_offset
    # every offset of the header (magic, counts, each metadata entry, the tensor table)
    for n in range(data_offset):
        _check_prefix(data, n)
    # around the start and end of every tensor's data
    cuts = set()
    for start, size in spans:
        for n in (start, start + 1, start + size // 2, start + size - 1):
            cuts.add(n)
    cuts.discard(len(data))
    for n in sorted(cuts):
        _check_prefix(data, n)
    # through the file on disk: the mapped path and the model loader
    for n in (10, data_offset // 2, data_offset, spans[-1][0] + 1, len(data) - 1):
        p = write(tmp_path, data[:n], f"cut{n}.gguf")
        with pytest.raises(FormatError, match="truncated|remain|can hold|outside"):
            ffnskip.Model(str(p))
        with pytest.raises(FormatError):
            _core.gguf_inspect(str(p))


def test_truncated_real_model(smollm2_q4_1):
    r, data_offset, spans = _header_and_tensors(smollm2_q4_1)
    with open(smollm2_q4_1, "rb") as f:
        head = f.read(data_offset + 4096)
    rng = random.Random(1)
    # each metadata entry and tensor-table entry: its first byte, its middle, its last byte
    cuts = set(range(0, 64))
    for field in r.fields.values():
        start = field.offset
        end = start + sum(p.nbytes for p in field.parts)
        cuts.update((start, start + 1, (start + end) // 2, end - 1))
    cuts.update(rng.randrange(data_offset) for _ in range(200))
    cuts.update((data_offset - 1, data_offset, data_offset + 1))
    for n in sorted(c for c in cuts if c < data_offset + 2):
        _check_prefix(head, n)
    # cuts inside the data section need the bytes before them
    with open(smollm2_q4_1, "rb") as f:
        whole = f.read()
    for start, size in [spans[0], spans[len(spans) // 2], spans[-1]]:
        _check_prefix(whole, start + size - 1)


# ---- absurd sizes ------------------------------------------------------------------

HUGE = (2**64 - 1, 2**63, 2**62, 2**32, 10**12)


@pytest.mark.parametrize("huge", HUGE)
def test_absurd_counts(huge):
    with pytest.raises(FormatError, match="metadata count .* larger than the file"):
        parse(image(n_kv=huge))
    with pytest.raises(FormatError, match="tensor count .* larger than the file"):
        parse(image(n_tensors=huge))


@pytest.mark.parametrize("huge", HUGE)
def test_absurd_string_lengths(huge):
    key = struct.pack("<Q", huge) + b"general.name"
    with pytest.raises(FormatError, match=f"metadata key has length {huge}"):
        parse(image([key + struct.pack("<I", STR) + enc_str("x")]))
    bad_value = enc_str("general.name") + struct.pack("<IQ", STR, huge) + b"abc"
    with pytest.raises(FormatError, match=f"string value has length {huge}"):
        parse(image([bad_value]))
    bad_name = struct.pack("<Q", huge) + b"t" + struct.pack("<IQIQ", 1, 32, T_F32, 0)
    with pytest.raises(FormatError, match=f"tensor name has length {huge}"):
        parse(image([], [bad_name], b"\0" * 128))


@pytest.mark.parametrize("elem", [U8, U64, STR, ARR])
@pytest.mark.parametrize("huge", HUGE)
def test_absurd_array_lengths(elem, huge):
    kv = enc_str("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARR, elem, huge) + b"\0" * 64
    with pytest.raises(FormatError, match=f"'tokenizer.ggml.tokens': array of {huge} .*cannot fit"):
        parse(image([kv]))


def test_absurd_string_inside_array():
    items = [enc_str("ok"), struct.pack("<Q", 2**63) + b"x"]
    with pytest.raises(FormatError, match="string value has length"):
        parse(image([enc_kv("tokenizer.ggml.tokens", ARR, (STR, items))]))


def test_nested_arrays():
    got = parse(image([enc_kv("a", ARR, (ARR, [nested_array(1), nested_array(1)]))]))
    assert got["metadata"]["a"] == [[7], [7]]
    for depth in (64, 100_000):
        kv = enc_str("deep") + struct.pack("<I", ARR) + nested_array(depth)
        with pytest.raises(FormatError, match="'deep': arrays nested deeper than"):
            parse(image([kv]))


# ---- alignment and tensor placement -----------------------------------------------

@pytest.mark.parametrize("vtype, value", [
    (U32, 48), (U32, 0), (U32, 3), (I32, -32), (U64, 2**63), (U32, 2**31), (STR, "32"), (F32, 32.0),
])
def test_bad_alignment(vtype, value):
    with pytest.raises(FormatError, match="general.alignment must be a positive power of two"):
        parse(image([enc_kv("general.alignment", vtype, value)]))


def test_custom_alignment_is_used(tmp_path):
    kvs = [enc_kv("general.alignment", U32, 64)]
    tensors = [enc_tensor("a", [4], T_F32, 0), enc_tensor("b", [4], T_F32, 64)]
    img = image(kvs, tensors, b"\1" * 80, alignment=64)
    got = parse(img)
    r = gguf.GGUFReader(write(tmp_path, img))
    assert got["alignment"] == 64 and got["data_offset"] == r.data_offset
    assert [t["offset"] for t in got["tensors"]] == [t.data_offset for t in r.tensors]
    # offset 32 is aligned for the default alignment but not for 64
    bad = image(kvs, [enc_tensor("a", [4], T_F32, 32)], b"\1" * 64, alignment=64)
    with pytest.raises(FormatError, match="offset 32 is not a multiple of the alignment 64"):
        parse(bad)


def test_unaligned_tensor_offset():
    with pytest.raises(FormatError, match="'w': offset 4 is not a multiple of the alignment 32"):
        parse(image([], [enc_tensor("w", [4], T_F32, 4)], b"\0" * 64))


@pytest.mark.parametrize("offset, size, data_len", [
    (0, 16, 15),              # data one byte short
    (32, 16, 40),             # starts inside, ends outside
    (1 << 20, 16, 64),        # far past the end
    (2**64 - 32, 16, 64),     # offset + size wraps around
])
def test_tensor_data_out_of_range(offset, size, data_len):
    img = image([], [enc_tensor("w", [size // 4], T_F32, offset)], b"\0" * data_len)
    with pytest.raises(FormatError, match=r"tensor 'w' \(F32, 16 bytes at data offset \d+\) lies outside"):
        parse(img)


def test_duplicate_key():
    kvs = [enc_kv("general.name", STR, "a"), enc_kv("x", U8, 1), enc_kv("general.name", STR, "b")]
    with pytest.raises(FormatError, match="duplicate metadata key 'general.name'"):
        parse(image(kvs))


def test_duplicate_tensor():
    tensors = [enc_tensor("w", [4], T_F32, 0), enc_tensor("w", [4], T_F32, 32)]
    with pytest.raises(FormatError, match="duplicate tensor name 'w'"):
        parse(image([], tensors, b"\0" * 64))


def test_empty_key_and_name():
    with pytest.raises(FormatError, match="empty key"):
        parse(image([enc_kv("", U8, 1)]))
    with pytest.raises(FormatError, match="empty name"):
        parse(image([], [enc_tensor("", [4], T_F32, 0)], b"\0" * 32))


@pytest.mark.parametrize("bad", [b"ke\xfey", b"\xc0\x80", b"\xed\xa0\x80", b"a\xe2\x82", b"\xf4\x90\x80\x80"])
def test_names_not_utf8(bad):
    with pytest.raises(FormatError, match="metadata entry 1 has a key that is not valid UTF-8"):
        parse(image([enc_kv("ok", U8, 1), enc_kv(bad, U8, 1)]))
    with pytest.raises(FormatError, match="tensor 0 has a name that is not valid UTF-8"):
        parse(image([], [enc_tensor(bad, [4], T_F32, 0)], b"\0" * 32))
    # string values may hold any bytes; they come back with U+FFFD in their place
    got = parse(image([enc_kv("v", STR, bad), enc_kv("größe", U8, 1)]))
    assert got["metadata"]["v"] == bad.decode("utf-8", errors="replace")
    assert got["metadata"]["größe"] == 1


@pytest.mark.parametrize("ttype, name", [
    (16, "IQ2_XXS"), (23, "IQ4_XS"), (4, "Q4_2"), (29, "IQ1_M"), (1000, "type 1000"), (2**32 - 1, "type 4294967295"),
])
def test_unknown_tensor_type(ttype, name):
    with pytest.raises(FormatError, match=rf"tensor 'w' has type {name} \({ttype}\), which ffnskip does not support"):
        parse(image([], [enc_tensor("w", [256], ttype, 0)], b"\0" * 1024))


def test_unknown_tensor_type_in_model(tmp_path, synthetic_model):
    # a real model file whose attn_k is marked IQ2_XXS: the loader names tensor and type
    src = synthetic_model()
    r = gguf.GGUFReader(src)
    t = next(t for t in r.tensors if t.name == "blk.1.attn_k.weight")
    data = bytearray(src.read_bytes())
    type_at = t.field.offset + sum(p.nbytes for p in t.field.parts[:-2])
    assert struct.unpack_from("<I", data, type_at)[0] == T_F32
    struct.pack_into("<I", data, type_at, 16)
    with pytest.raises(FormatError, match=r"'blk.1.attn_k.weight' has type IQ2_XXS \(16\)"):
        ffnskip.Model(str(write(tmp_path, bytes(data))))


def test_row_not_a_block_multiple():
    with pytest.raises(FormatError, match="row length 31 is not a multiple of the Q8_0 block size 32"):
        parse(image([], [enc_tensor("w", [31, 2], T_Q8_0, 0)], b"\0" * 128))


@pytest.mark.parametrize("vtype", [13, 14, 255, 2**31, 2**32 - 1])
def test_unknown_value_type(vtype):
    kv = enc_str("general.name") + struct.pack("<I", vtype) + b"\0" * 16
    with pytest.raises(FormatError, match=f"'general.name' has unknown value type {vtype}"):
        parse(image([kv]))
    arr = enc_str("general.tags") + struct.pack("<IIQ", ARR, vtype, 1) + b"\0" * 16
    with pytest.raises(FormatError, match=f"'general.tags': unknown array element type {vtype}"):
        parse(image([arr]))


def test_bad_bool():
    with pytest.raises(FormatError, match="bool value 2 is not 0 or 1"):
        parse(image([enc_kv("tokenizer.ggml.add_bos_token", U8, 2)[:-5] + struct.pack("<IB", BOOL, 2)]))


@pytest.mark.parametrize("ne, message", [
    ([2**32, 2**32, 2**32], "element count overflows"),
    ([2**21, 2**21, 2**21, 2**21], "element count overflows"),
    ([2**62], "byte size overflows"),               # fits as a count, not as bytes
    ([2**40, 2**22], "byte size overflows"),
    ([4, 0], "invalid dimension 0"),
    ([2**63], "invalid dimension"),
    ([2**64 - 1], "invalid dimension"),
])
def test_dimension_overflow(ne, message):
    with pytest.raises(FormatError, match=f"tensor 'w'.*{message}"):
        parse(image([], [enc_tensor("w", ne, T_F32, 0)], b"\0" * 64))


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_dimension_count(n_dims):
    t = enc_str("w") + struct.pack("<I", n_dims) + struct.pack("<4Q", 1, 1, 1, 1) + struct.pack("<IQ", T_F32, 0)
    with pytest.raises(FormatError, match=f"'w' has {n_dims} dimensions"):
        parse(image([], [t], b"\0" * 64))


# ---- valid GGUF, invalid model: rewrites of a synthetic model -------------------------

def rewrite(src, dst, *, drop_kv=(), set_kv=None, drop_tensors=(), shapes=None):
    """Copy a GGUF, dropping or replacing metadata and tensors (raw bytes, so every
    value keeps its exact type), and write it with our image(); tensor data is kept."""
    r = gguf.GGUFReader(src)
    set_kv = set_kv or {}
    shapes = shapes or {}
    kvs = []
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in drop_kv:
            continue
        if f.name in set_kv:
            kvs.append(enc_kv(f.name, *set_kv[f.name]))
        else:
            kvs.append(b"".join(p.tobytes() for p in f.parts))
    for key, (vtype, v) in set_kv.items():
        if key not in r.fields:
            kvs.append(enc_kv(key, vtype, v))
    tensors, data = [], b""
    for t in r.tensors:
        if t.name in drop_tensors:
            continue
        raw = bytes(t.data.tobytes())
        assert len(raw) == t.n_bytes
        data += b"\0" * ((-len(data)) % 32)
        ne = shapes.get(t.name, [int(d) for d in t.shape])
        tensors.append(enc_tensor(t.name, ne, int(t.tensor_type), len(data)))
        data += raw
    dst.write_bytes(image(kvs, tensors, data))
    return dst


def test_rewrite_keeps_a_valid_model(tmp_path, synthetic_model):
    # the rewriting itself must not break anything: the copy loads and gives the same logits
    src = synthetic_model()
    copy = rewrite(src, tmp_path / "copy.gguf")
    a = ffnskip.Session(src, n_ctx=32, n_threads=1).eval([1, 2, 3])
    b = ffnskip.Session(copy, n_ctx=32, n_threads=1).eval([1, 2, 3])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arch", ["gpt2", "falcon", "qwen2moe", "qwen3", ""])
def test_unsupported_architecture(tmp_path, synthetic_model, arch):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", set_kv={"general.architecture": (STR, arch)})
    with pytest.raises(FormatError, match=f"unsupported architecture '{arch}'"):
        ffnskip.Model(str(path))


def test_architecture_of_wrong_type(tmp_path, synthetic_model):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", set_kv={"general.architecture": (U32, 7)})
    with pytest.raises(FormatError, match="'general.architecture' should be a string, found u32"):
        ffnskip.Model(str(path))


@pytest.mark.parametrize("key", [
    "general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.context_length",
])
def test_missing_required_metadata(tmp_path, synthetic_model, key):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", drop_kv={key})
    with pytest.raises(FormatError, match=f"required metadata '{re.escape(key)}' is missing"):
        ffnskip.Model(str(path))


@pytest.mark.parametrize("key, vtype, value, message", [
    ("llama.block_count", U32, 0, "block_count' = 0 is out of range"),
    ("llama.block_count", I32, -2, "block_count' = -2 is out of range"),
    ("llama.block_count", U64, 2**64 - 1, "block_count' is out of range"),
    ("llama.block_count", STR, "2", "'llama.block_count' should be an integer, found string"),
    ("llama.attention.head_count", U32, 3, "not a multiple of head_count"),
    ("llama.attention.head_count_kv", U32, 3, "head_count 4 is not a multiple of head_count_kv 3"),
    ("llama.rope.freq_base", F32, -1.0, "rope.freq_base must be positive"),
    ("llama.rope.freq_base", F32, float("nan"), "rope.freq_base must be positive"),
    ("llama.attention.layer_norm_rms_epsilon", F32, 0.0, "layer_norm_rms_epsilon must be positive"),
    ("llama.rope.dimension_count", U32, 3, "must be even"),
    ("llama.rope.scaling.type", STR, "yarn", "RoPE scaling type 'yarn' is not supported"),
])
def test_bad_metadata_values(tmp_path, synthetic_model, key, vtype, value, message):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", set_kv={key: (vtype, value)})
    with pytest.raises(FormatError, match=message):
        ffnskip.Model(str(path))


def test_block_count_above_the_tensors(tmp_path, synthetic_model):
    path = rewrite(synthetic_model(n_layer=2), tmp_path / "m.gguf", set_kv={"llama.block_count": (U32, 3)})
    with pytest.raises(FormatError, match="required tensor 'blk.2.attn_norm.weight' is missing"):
        ffnskip.Model(str(path))


@pytest.mark.parametrize("name", [
    "token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_up.weight",
    "blk.1.ffn_down.weight", "blk.0.attn_norm.weight",
])
def test_missing_required_tensor(tmp_path, synthetic_model, name):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", drop_tensors={name})
    with pytest.raises(FormatError, match=f"required tensor '{re.escape(name)}' is missing"):
        ffnskip.Model(str(path))


@pytest.mark.parametrize("name, shape, expected", [
    # n_embd 64, n_ff 192, n_vocab 384
    ("blk.0.ffn_gate.weight", [192, 64], r"\[64, 192\]"),
    ("blk.1.ffn_down.weight", [64, 192], r"\[192, 64\]"),
    ("blk.0.attn_norm.weight", [32, 2], r"\[64\]"),
    ("token_embd.weight", [384, 64], r"\[64, n_vocab\]"),
    ("token_embd.weight", [64, 384, 1], r"\[64, n_vocab\]"),
])
def test_wrong_tensor_shape(tmp_path, synthetic_model, name, shape, expected):
    path = rewrite(synthetic_model(), tmp_path / "m.gguf", shapes={name: shape})
    with pytest.raises(FormatError, match=rf"tensor '{re.escape(name)}' has shape \[{', '.join(map(str, shape))}\], expected {expected}"):
        ffnskip.Model(str(path))


def test_non_finite_norm_weight(tmp_path, synthetic_model):
    src = synthetic_model()
    r = gguf.GGUFReader(src)
    t = next(t for t in r.tensors if t.name == "output_norm.weight")
    data = bytearray(src.read_bytes())
    struct.pack_into("<f", data, t.data_offset + 8, float("inf"))
    with pytest.raises(FormatError, match="'output_norm.weight' holds a non-finite value"):
        ffnskip.Model(str(write(tmp_path, bytes(data))))


# ---- generation arguments ------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_session(tmp_path_factory):
    from synthetic import write_llama_gguf

    path = write_llama_gguf(tmp_path_factory.mktemp("bad-input") / "m.gguf", n_ctx=64)
    return ffnskip.Session(path, n_ctx=16, n_threads=1)


def _still_works(s):
    out = s.generate([5, 6, 7], max_tokens=3, temperature=0, ignore_eos=True)
    assert len(out.tokens) == 3 and out.finish_reason == "length"


def test_empty_prompt(small_session):
    with pytest.raises(ValueError, match="prompt is empty"):
        small_session.generate([])
    with pytest.raises(ValueError, match="no tokens"):
        small_session.eval([])
    _still_works(small_session)


def test_empty_text_prompt(synthetic_model):
    s = ffnskip.Session(synthetic_model(), n_ctx=16, n_threads=1)   # gpt2 vocabulary, no BOS
    try:
        s.tokenize("a")
    except ffnskip.FfnskipError as e:
        pytest.skip(f"tokenizer not available: {e}")
    with pytest.raises(ValueError, match="prompt is empty"):
        s.generate("", add_special=True)


def test_prompt_longer_than_context(small_session):
    with pytest.raises(ValueError, match="the prompt has 17 tokens, more than the context of 16"):
        small_session.generate(list(range(17)))
    small_session.reset()
    small_session.eval(list(range(10)))
    with pytest.raises(ValueError, match="17 tokens do not fit in the context of 16"):
        small_session.eval(list(range(7)))
    assert small_session.n_past == 10   # the refused call left the cache alone
    small_session.reset()
    _still_works(small_session)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"min_p": 1.5}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"top_k": -1}, "top_k"),
    ({"repeat_penalty": 0.0}, "repeat_penalty"),
    ({"repeat_penalty": -1.0}, "repeat_penalty"),
    ({"repeat_penalty": float("nan")}, "repeat_penalty"),
    ({"repeat_last_n": -2}, "repeat_last_n"),
    ({"frequency_penalty": float("inf")}, "frequency_penalty"),
    ({"seed": -2}, "seed"),
    ({"max_tokens": -5}, "max_tokens"),
])
def test_invalid_sampling_values(small_session, kwargs, field):
    with pytest.raises(ValueError, match=field):
        small_session.generate([1, 2], **kwargs)
    _still_works(small_session)


@pytest.mark.parametrize("kwargs", [{"seed": 2**64}, {"seed": "abc"}, {"top_k": 2**40}, {"temperature": "hot"}])
def test_unconvertible_sampling_values(small_session, kwargs):
    with pytest.raises((TypeError, ValueError, OverflowError)):
        small_session.generate([1, 2], **kwargs)


def test_unknown_argument_and_empty_stop(small_session):
    with pytest.raises(TypeError, match="temprature"):
        small_session.generate([1, 2], temprature=0.5)
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        small_session.generate([1, 2], stop=["ok", ""])


def test_token_ids_out_of_range(small_session):
    n_vocab = small_session.model.n_vocab
    for bad in (n_vocab, n_vocab + 100, -1, 2**31 - 1):
        with pytest.raises(ValueError, match=rf"token id {bad} is out of range \[0, {n_vocab}\)"):
            small_session.generate([1, bad, 2], temperature=0)
        with pytest.raises(ValueError, match=rf"token id {bad} is out of range"):
            small_session.eval([bad])
        with pytest.raises(ValueError, match=rf"token id {bad} is out of range"):
            small_session.model.token_to_piece(bad)
        with pytest.raises(ValueError, match=rf"token id {bad} is out of range"):
            small_session.detokenize([0, bad])
    for bad in (2**31, -2**31 - 1, 2**64):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            small_session.generate([bad])
    _still_works(small_session)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_ctx": -1}, "n_ctx must be >= 0"),
    ({"n_ctx": 2**30}, "n_ctx 1073741824 is larger than"),
    ({"n_threads": -1}, "n_threads must be >= 0"),
    ({"n_threads": 100000}, "n_threads is larger than"),
    ({"n_threads_batch": -3}, "n_threads_batch must be >= 0"),
    ({"n_batch": -1}, "n_batch must be >= 1"),
    ({"n_batch": 0}, "n_batch must be >= 1"),
])
def test_bad_session_params(synthetic_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ffnskip.Session(synthetic_model(), **kwargs)


# ---- mutation loop ---------------------------------------------------------------------

def _length_fields(img: bytes, sections) -> list[tuple[int, int]]:
    """(offset, width) of the counts, string lengths and array counts of the small image."""
    fields = [(8, 8), (16, 8)]
    for name, (a, b) in sections.items():
        if name.startswith(("kv", "tensor")):
            fields.append((a, 8))                       # key / name length
            klen = struct.unpack_from("<Q", img, a)[0]
            if name.startswith("kv"):
                fields.append((a + 8 + klen, 4))        # value type
                fields.append((a + 12 + klen, 8))       # string length or array element type
                fields.append((a + 16 + klen, 8))       # array count
            else:
                fields.append((a + 8 + klen, 4))        # n_dims
                fields.append((a + 12 + klen, 8))       # first dimension
                fields.append((b - 12, 4))              # type
                fields.append((b - 8, 8))               # offset
    return fields


def test_mutation_loop(synthetic_model):
    seed = int(os.environ.get("FFNSKIP_FUZZ_SEED", "1234"))
    budget = float(os.environ.get("FFNSKIP_FUZZ_SECONDS", "4"))
    rng = random.Random(seed)
    small, sections = small_image()
    fields = _length_fields(small, sections)
    model = synthetic_model().read_bytes()
    model_head = model[:gguf.GGUFReader(synthetic_model()).data_offset + 256]
    seeds = [(small, fields), (model_head, [(8, 8), (16, 8)])]
    huge = [0, 1, 2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 2**31, 10**9, len(small), len(small) + 1]

    def mutate(base: bytes, known) -> bytes:
        b = bytearray(base)
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            op = rng.randrange(6)
            if op == 0 and b:                                    # random bytes
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op == 1 and b:                                  # flip one bit
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            elif op == 2:                                        # huge value in a length field
                at, width = rng.choice(known)
                v = rng.choice(huge) & ((1 << (8 * width)) - 1)
                if at + width <= len(b):
                    b[at:at + width] = v.to_bytes(width, "little")
            elif op == 3 and len(b) > 8:                         # huge value anywhere
                at = rng.randrange(len(b) - 8)
                b[at:at + 8] = rng.choice(huge).to_bytes(8, "little")
            elif op == 4 and b:                                  # truncate
                del b[rng.randrange(len(b)):]
            elif op == 5 and len(b) > 4:                         # cut or repeat a chunk
                a = rng.randrange(len(b))
                c = min(len(b), a + rng.randrange(1, 64))
                if rng.random() < 0.5:
                    del b[a:c]
                else:
                    b[a:a] = b[a:c]
        return bytes(b)

    n = n_ok = n_err = 0
    t0 = time.monotonic()
    while n < 5000 and time.monotonic() - t0 < budget:
        base, known = seeds[n % 4 == 3]
        data = mutate(base, known)
        n += 1
        try:
            got = parse(data)
        except FormatError:
            n_err += 1
            continue
        except Exception as e:  # noqa: BLE001 - anything else is the bug we look for
            pytest.fail(f"mutation {n} (seed {seed}) raised {type(e).__name__}: {e}; input {data.hex()}")
        n_ok += 1
        for t in got["tensors"]:
            assert t["offset"] + t["n_bytes"] <= len(data), (t, data.hex())
            assert t["offset"] % got["alignment"] == 0
    assert n >= 300, f"only {n} mutations parsed in {budget} s"
    assert n_ok > 0 and n_err > 0, (n_ok, n_err)


# ---- qwen2: the architecture's own tensors and keys -----------------------------------

@pytest.mark.parametrize("name", ["blk.0.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"])
def test_qwen2_missing_bias(tmp_path, synthetic_model, name):
    path = rewrite(synthetic_model(arch="qwen2"), tmp_path / "m.gguf", drop_tensors={name})
    with pytest.raises(FormatError, match=f"required tensor '{re.escape(name)}' is missing"):
        ffnskip.Model(str(path))


@pytest.mark.parametrize("name, shape, expected", [
    # n_embd 64, n_head 4, n_head_kv 4: q and k/v widths 64
    ("blk.0.attn_q.bias", [32], r"\[64\]"),
    ("blk.1.attn_k.bias", [32, 2], r"\[64\]"),
    ("blk.0.attn_v.bias", [16], r"\[64\]"),
])
def test_qwen2_mis_shaped_bias(tmp_path, synthetic_model, name, shape, expected):
    path = rewrite(synthetic_model(arch="qwen2"), tmp_path / "m.gguf", shapes={name: shape})
    with pytest.raises(FormatError, match=rf"tensor '{re.escape(name)}' has shape \[{', '.join(map(str, shape))}\], expected {expected}"):
        ffnskip.Model(str(path))


def test_qwen2_reads_its_own_keys(tmp_path, synthetic_model):
    """Metadata is read under the architecture's prefix: a qwen2 file with llama.* keys is not enough."""
    path = rewrite(synthetic_model(arch="qwen2"), tmp_path / "m.gguf", drop_kv={"qwen2.block_count"},
                   set_kv={"llama.block_count": (U32, 2)})
    with pytest.raises(FormatError, match="required metadata 'qwen2.block_count' is missing"):
        ffnskip.Model(str(path))


def test_qwen2_file_relabelled_llama_lacks_llama_keys(tmp_path, synthetic_model):
    path = rewrite(synthetic_model(arch="qwen2"), tmp_path / "m.gguf", set_kv={"general.architecture": (STR, "llama")})
    with pytest.raises(FormatError, match="required metadata 'llama.block_count' is missing"):
        ffnskip.Model(str(path))


def test_unknown_architecture_names_the_known_ones(tmp_path, synthetic_model):
    path = rewrite(synthetic_model(arch="qwen2"), tmp_path / "m.gguf", set_kv={"general.architecture": (STR, "qwen3")})
    with pytest.raises(FormatError, match=r"unsupported architecture 'qwen3' \(ffnskip runs general.architecture = llama, qwen2\)"):
        ffnskip.Model(str(path))
