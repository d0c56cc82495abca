// Raw GGUF inspection: metadata and tensor table of any GGUF file (also
// vocabulary-only ones), for `ffnskip info` and the parser tests.
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "gguf/gguf.h"

namespace py = pybind11;

namespace ffnskip_py {
namespace {

py::object to_python(const ffnskip::GgufValue& v) {
    using T = ffnskip::GgufValueType;
    switch (v.type) {
        case T::STRING: return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(v.str.data(), (Py_ssize_t)v.str.size(), "replace"));
        case T::BOOL: return py::bool_(v.u64 != 0);
        case T::FLOAT32: case T::FLOAT64: return py::float_(v.f64);
        case T::UINT64: return py::int_(v.u64);
        case T::ARRAY: {
            py::list out(v.array.size());
            for (size_t i = 0; i < v.array.size(); i++) out[i] = to_python(v.array[i]);
            return std::move(out);
        }
        default: return py::int_(v.i64);
    }
}

py::dict describe(const ffnskip::GgufFile& f) {
    py::dict out;
    out["version"] = f.version();
    out["alignment"] = f.alignment();
    out["data_offset"] = f.data_offset();
    out["file_size"] = f.file_size();
    py::dict meta;
    for (const auto& kv : f.metadata()) meta[py::str(kv.first)] = to_python(kv.second);
    out["metadata"] = meta;
    py::list tensors;
    for (const auto& t : f.tensors()) {
        py::dict d;
        d["name"] = t.name;
        d["type"] = ffnskip::type_name((uint32_t)t.type);
        d["shape"] = t.ne;
        d["offset"] = f.data_offset() + t.offset;
        d["n_bytes"] = t.n_bytes;
        tensors.append(d);
    }
    out["tensors"] = tensors;
    return out;
}

}  // namespace

void bind_gguf(py::module_& m) {
    m.def("gguf_inspect", [](const std::string& path) {
        std::unique_ptr<ffnskip::GgufFile> f;
        {
            py::gil_scoped_release release;
            f = std::make_unique<ffnskip::GgufFile>(path);
        }
        return describe(*f);
    }, py::arg("path"), "Parse and validate a GGUF file; return its version, metadata and tensor table.");
    m.def("_gguf_parse_bytes", [](py::bytes data) {
        std::string buf = data;
        ffnskip::GgufFile f(reinterpret_cast<const uint8_t*>(buf.data()), buf.size(), "<bytes>");
        return describe(f);
    }, py::arg("data"), "Parse a GGUF image held in memory (tests and fuzzing).");
}
}  // namespace ffnskip_py
