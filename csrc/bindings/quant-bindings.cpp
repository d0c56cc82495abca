// Block formats: test hooks (leading underscore) and the SIMD level.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cctype>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "quant/quant.h"

namespace py = pybind11;
using ffnskip::GgmlType;

namespace ffnskip_py {

using float_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// "q4_k" or "Q4_K" -> GgmlType; ValueError for names this engine does not support.
static GgmlType parse_type(const std::string& name) {
    std::string up = name;
    for (char& c : up) c = char(std::toupper(static_cast<unsigned char>(c)));
    for (uint32_t raw = 0; raw <= 64; raw++) {
        if (!ffnskip::type_is_supported(raw)) continue;
        if (up == ffnskip::type_name(raw)) return GgmlType(raw);
    }
    throw std::invalid_argument("unknown or unsupported tensor type '" + name + "'");
}

// Row bytes for n elements, with the error phrased for Python callers.
static size_t checked_row_size(GgmlType type, int64_t n, const char* what) {
    if (n <= 0) throw std::invalid_argument(std::string(what) + ": n must be positive, got " + std::to_string(n));
    return ffnskip::row_size(type, n);   // throws invalid_argument when n is not whole blocks
}

// Raw block bytes from any contiguous buffer of bytes (bytes, bytearray, uint8 arrays).
static py::buffer_info byte_view(const py::buffer& b, const char* what) {
    py::buffer_info info = b.request();
    if (info.itemsize != 1) {
        throw std::invalid_argument(std::string(what) + ": expected bytes or a uint8 array, got items of " +
                                    std::to_string(info.itemsize) + " bytes");
    }
    py::ssize_t expect = 1;
    for (py::ssize_t d = info.ndim - 1; d >= 0; d--) {
        if (info.shape[d] != 1 && info.strides[d] != expect) {
            throw std::invalid_argument(std::string(what) + ": the buffer must be contiguous");
        }
        expect *= info.shape[d];
    }
    return info;
}

static void check_bytes(const py::buffer_info& a, size_t expected, const char* what, GgmlType type, int64_t n) {
    if (size_t(a.size) != expected) {
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(n) + " " +
                                    ffnskip::type_traits(type).name + " elements take " + std::to_string(expected) +
                                    " bytes, got " + std::to_string(a.size));
    }
}

void bind_quant(py::module_& m) {
    m.def("simd_level", &ffnskip::simd_level, "SIMD path in use: 'avx512', 'avx2' or 'scalar'.");
    m.def("_simd_levels", &ffnskip::simd_levels, "SIMD paths this CPU and build can run, lowest first.");
    m.def(
        "_set_simd_level", [](const std::string& name) { return std::string(ffnskip::set_simd_level(name.c_str())); },
        py::arg("level"), "Switch the CPU kernels to a SIMD path (tests compare paths); returns the previous one.");

    m.def("_set_force_scalar", &ffnskip::set_force_scalar, py::arg("force"),
          "Force the scalar dot products (tests compare paths); returns the previous setting.");

    m.def(
        "_type_info",
        [](const std::string& name) {
            const ffnskip::TypeTraits& t = ffnskip::type_traits(parse_type(name));
            py::dict d;
            d["name"] = t.name;
            d["block_size"] = t.block_size;
            d["type_size"] = t.type_size;
            d["vec_dot_type"] = ffnskip::type_name(uint32_t(t.vec_dot_type));
            return d;
        },
        py::arg("type"));

    m.def(
        "_type_name", [](uint32_t raw) { return std::string(ffnskip::type_name(raw)); }, py::arg("raw"));

    m.def(
        "_dequantize",
        [](const std::string& name, const py::buffer& buf, int64_t n) {
            const GgmlType type = parse_type(name);
            const py::buffer_info data = byte_view(buf, "_dequantize");
            check_bytes(data, checked_row_size(type, n, "_dequantize"), "_dequantize", type, n);
            py::array_t<float> out(n);
            ffnskip::dequantize_row(type, data.ptr, out.mutable_data(), n);
            return out;
        },
        py::arg("type"), py::arg("data"), py::arg("n"));

    m.def(
        "_quantize",
        [](const std::string& name, const float_array& x) {
            const GgmlType type = parse_type(name);
            const int64_t n = int64_t(x.size());
            const size_t bytes = checked_row_size(type, n, "_quantize");
            py::array_t<uint8_t> out(bytes);
            ffnskip::quantize_row(type, x.data(), out.mutable_data(), n);
            return out;
        },
        py::arg("type"), py::arg("x"));

    m.def(
        "_vec_dot",
        [](const std::string& wname, const py::buffer& wbuf, const py::buffer& abuf, int64_t n, bool reference) {
            const GgmlType wtype = parse_type(wname);
            const GgmlType atype = ffnskip::type_traits(wtype).vec_dot_type;
            const py::buffer_info w = byte_view(wbuf, "_vec_dot weights");
            const py::buffer_info a = byte_view(abuf, "_vec_dot activations");
            check_bytes(w, checked_row_size(wtype, n, "_vec_dot"), "_vec_dot weights", wtype, n);
            check_bytes(a, checked_row_size(atype, n, "_vec_dot"), "_vec_dot activations", atype, n);
            return reference ? ffnskip::vec_dot_reference(wtype, n, w.ptr, a.ptr)
                             : ffnskip::vec_dot(wtype, n, w.ptr, a.ptr);
        },
        py::arg("wtype"), py::arg("w"), py::arg("a"), py::arg("n"), py::arg("reference") = false);

    m.def(
        "_matmul",
        [](const std::string& wname, const py::buffer& wbuf, int64_t n_out, const float_array& x) {
            // y (n_tokens, n_out) = x (n_tokens, n) times the n_out weight rows, through the
            // tiled kernel where the type has one (as the forward pass calls it), else vec_dot.
            const GgmlType wtype = parse_type(wname);
            const GgmlType atype = ffnskip::type_traits(wtype).vec_dot_type;
            if (x.ndim() != 2) throw std::invalid_argument("_matmul: x must be (n_tokens, n)");
            const int64_t nt = x.shape(0), n = x.shape(1);
            const size_t w_row = checked_row_size(wtype, n, "_matmul"), a_row = ffnskip::row_size(atype, n);
            if (n_out <= 0 || nt <= 0) throw std::invalid_argument("_matmul: empty product");
            const py::buffer_info w = byte_view(wbuf, "_matmul weights");
            if (size_t(w.size) != w_row * size_t(n_out)) {
                throw std::invalid_argument("_matmul: " + std::to_string(n_out) + " rows of " + std::to_string(n) + " " +
                                            ffnskip::type_traits(wtype).name + " elements take " +
                                            std::to_string(w_row * size_t(n_out)) + " bytes, got " + std::to_string(w.size));
            }
            std::vector<uint8_t> a(a_row * size_t(nt));
            for (int64_t t = 0; t < nt; t++) ffnskip::quantize_row(atype, x.data() + t * n, a.data() + t * a_row, n);
            py::array_t<float> y({nt, n_out});
            float* out = y.mutable_data();
            const uint8_t* wp = static_cast<const uint8_t*>(w.ptr);
            {
                py::gil_scoped_release unlocked;
                if (const ffnskip::GemmFn gemm = ffnskip::gemm_fn(wtype)) {
                    gemm(n, wp, w_row, int(n_out), a.data(), a_row, int(nt), out, size_t(n_out));
                } else {
                    const ffnskip::VecDotFn dot = ffnskip::vec_dot_fn(wtype);
                    for (int64_t t = 0; t < nt; t++)
                        for (int64_t r = 0; r < n_out; r++) out[t * n_out + r] = dot(n, wp + r * w_row, a.data() + t * a_row);
                }
            }
            return y;
        },
        py::arg("wtype"), py::arg("w"), py::arg("n_out"), py::arg("x"));

    // fp16 / bf16 helpers over arrays (compared with numpy in the tests)
    m.def(
        "_fp32_to_fp16",
        [](const float_array& x) {
            py::array_t<uint16_t> out(x.size());
            for (py::ssize_t i = 0; i < x.size(); i++) out.mutable_data()[i] = ffnskip::fp32_to_fp16(x.data()[i]);
            return out;
        },
        py::arg("x"));
    m.def(
        "_fp16_to_fp32",
        [](const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& h) {
            py::array_t<float> out(h.size());
            for (py::ssize_t i = 0; i < h.size(); i++) out.mutable_data()[i] = ffnskip::fp16_to_fp32(h.data()[i]);
            return out;
        },
        py::arg("h"));
    m.def(
        "_fp32_to_bf16",
        [](const float_array& x) {
            py::array_t<uint16_t> out(x.size());
            for (py::ssize_t i = 0; i < x.size(); i++) out.mutable_data()[i] = ffnskip::fp32_to_bf16(x.data()[i]);
            return out;
        },
        py::arg("x"));
    m.def(
        "_bf16_to_fp32",
        [](const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& h) {
            py::array_t<float> out(h.size());
            for (py::ssize_t i = 0; i < h.size(); i++) out.mutable_data()[i] = ffnskip::bf16_to_fp32(h.data()[i]);
            return out;
        },
        py::arg("h"));
}

}  // namespace ffnskip_py
