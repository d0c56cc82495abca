"""Re-encode a GGUF's weights in another type with the `gguf` package: de-quantize
every tensor and quantize it again (F32, F16, BF16, Q8_0, Q4_0, ... whatever
gguf.quants.quantize makes), copying all metadata. Used to make the F32 twin of
the Q4_1 test model (llama.cpp's greedy_f32.json was made on such a copy) and the
format variants for benchmarks; `truncate` keeps a model's first blocks."""
from __future__ import annotations

import re
import sys

import gguf
import numpy as np

FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}


def _copy_field(writer: gguf.GGUFWriter, key: str, field) -> None:
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            value = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        else:
            value = [field.parts[i][0].item() for i in field.data]
        writer.add_key_value(key, value, vtype, sub_type=sub)
    elif vtype == gguf.GGUFValueType.STRING:
        writer.add_key_value(key, bytes(field.parts[-1]).decode("utf-8"), vtype)
    else:
        writer.add_key_value(key, field.parts[-1][0].item(), vtype)


def convert(src: str, dst: str, type_name: str, transform=None) -> str:
    """Write dst with every 2-D weight in type_name (1-D tensors stay F32).
    transform(name, values) -> values may change a tensor on the way."""
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        _copy_field(writer, key, field)
    if type_name in FILE_TYPE:
        writer.add_file_type(FILE_TYPE[type_name])
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        values = values.reshape([int(d) for d in reversed(t.shape)])
        if transform is not None:
            values = np.ascontiguousarray(transform(t.name, values), dtype=np.float32)
        if values.ndim >= 2 and type_name != "F32":
            data = gguf.quants.quantize(values, qtype)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, values)
    return _finish(writer, dst)


def truncate(src: str, dst: str, n_layers: int) -> str:
    """Keep the first n_layers blocks (tensors copied byte for byte, the block count
    changed): a smaller real model for machines a full test model cannot be carried to."""
    reader = gguf.GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == f"{arch}.block_count":
            writer.add_block_count(n_layers)
        else:
            _copy_field(writer, key, field)
    for t in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m is None or int(m.group(1)) < n_layers:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    return _finish(writer, dst)


def _finish(writer: gguf.GGUFWriter, dst: str) -> str:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "truncate":
        truncate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 4:
        convert(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: gguf_convert.py SRC DST TYPE | gguf_convert.py truncate SRC DST N_LAYERS")
