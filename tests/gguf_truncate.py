"""Keep the first N blocks of a LLaMA GGUF (tensors copied byte for byte, metadata
copied with the block count changed): a smaller real model for machines a full test
model cannot be carried to.

    python tests/gguf_truncate.py SRC DST N_LAYERS
"""
from __future__ import annotations

import re
import sys

import gguf

from gguf_convert import _copy_field


def truncate(src: str, dst: str, n_layers: int) -> str:
    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == f"{arch}.block_count":
            writer.add_block_count(n_layers)
            continue
        _copy_field(writer, key, field)
    for t in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n_layers:
            continue
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: gguf_truncate.py SRC DST N_LAYERS")
    truncate(sys.argv[1], sys.argv[2], int(sys.argv[3]))
