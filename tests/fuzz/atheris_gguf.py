"""Atheris fuzzer for the GGUF reader, through the Python binding.

    python3 tests/fuzz/atheris_gguf.py -max_total_time=60 CORPUS_DIR
    python3 tests/fuzz/atheris_gguf.py --make-corpus CORPUS_DIR
(after `pip install .`; in a tree built in place, prefix PYTHONPATH=python)

Only ffnskip.FormatError may come out of ffnskip._core._gguf_parse_bytes; anything
else (another exception, a crash) stops the fuzzer with the input that caused it.
A parse that succeeds must describe tensors that lie inside the image.
--make-corpus writes seed files (a hand-made image with every value type, a tiny
synthetic model) and exits. See README.md beside this file.
"""
from __future__ import annotations

import pathlib
import sys

TESTS_DIR = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS_DIR))


def make_corpus(folder: pathlib.Path) -> None:
    import tempfile

    from synthetic import write_llama_gguf
    from test_bad_input import image, enc_kv, enc_tensor, small_image, STR, ARR, U8, T_F32, nested_array

    folder.mkdir(parents=True, exist_ok=True)
    img, _ = small_image()
    (folder / "small.gguf").write_bytes(img)
    (folder / "nested.gguf").write_bytes(
        image([enc_kv("a", ARR, (ARR, [nested_array(3)])), enc_kv("s", STR, "x"), enc_kv("b", U8, 1)],
              [enc_tensor("t", [8], T_F32, 0)], b"\0" * 32))
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in {"llama-f32": {}, "llama-q8": {"weight_type": "Q8_0", "tokenizer": "llama"}}.items():
            path = write_llama_gguf(pathlib.Path(tmp) / "m.gguf", n_embd=32, n_layer=1, n_head=2, n_ff=32, **kwargs)
            (folder / f"{name}.gguf").write_bytes(path.read_bytes())
    print(f"wrote {len(list(folder.iterdir()))} seeds to {folder}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(pathlib.Path(sys.argv[2]))
        return

    import atheris

    with atheris.instrument_imports():
        from ffnskip import _core

    def test_one_input(data: bytes) -> None:
        try:
            got = _core._gguf_parse_bytes(data)
        except _core.FormatError:
            return
        for t in got["tensors"]:
            if t["offset"] + t["n_bytes"] > len(data):
                raise AssertionError(f"tensor {t['name']!r} lies outside the image: {t}")

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
