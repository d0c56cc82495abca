// Vocabulary-only tokenizer: any GGUF with tokenizer.ggml.* metadata (also ones
// without tensors), for tests and tools.
#include <pybind11/stl.h>

#include <memory>

#include "bindings/bindings.h"
#include "gguf/gguf.h"
#include "tokenizer/vocab.h"

namespace py = pybind11;

namespace ffnskip_py {
namespace {

py::str utf8_replace(const std::string& s) {
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t)s.size(), "replace"));
}

struct Tokenizer {
    std::unique_ptr<ffnskip::Vocab> vocab;
    explicit Tokenizer(const std::string& path) {
        ffnskip::GgufFile file(path);
        vocab = ffnskip::Vocab::from_gguf(file);
    }
};

}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer>(m, "Tokenizer", "Tokenizer of a GGUF file's vocabulary (ids as llama.cpp's)")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def("tokenize",
             [](const Tokenizer& t, const std::string& text, bool add_special, bool parse_special) {
                 py::gil_scoped_release release;
                 return t.vocab->tokenize(text, add_special, parse_special);
             },
             py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
        .def("token_to_piece",
             [](const Tokenizer& t, int32_t id, bool render_special) {
                 return py::bytes(t.vocab->token_to_piece(id, render_special));
             },
             py::arg("id"), py::arg("render_special") = true)
        .def("detokenize",
             [](const Tokenizer& t, const std::vector<int32_t>& ids, bool render_special) {
                 std::string text;
                 {
                     py::gil_scoped_release release;
                     text = t.vocab->detokenize(ids, render_special);
                 }
                 return utf8_replace(text);
             },
             py::arg("ids"), py::arg("render_special") = true)
        .def("is_eog", [](const Tokenizer& t, int32_t id) { return t.vocab->is_eog(id); }, py::arg("id"))
        .def("token_text", [](const Tokenizer& t, int32_t id) { return py::bytes(t.vocab->token_text(id)); }, py::arg("id"))
        .def_property_readonly("n_vocab", [](const Tokenizer& t) { return t.vocab->n_tokens(); })
        .def_property_readonly("bos", [](const Tokenizer& t) { return t.vocab->bos(); })
        .def_property_readonly("eos", [](const Tokenizer& t) { return t.vocab->eos(); })
        .def_property_readonly("eot", [](const Tokenizer& t) { return t.vocab->eot(); })
        .def_property_readonly("add_bos", [](const Tokenizer& t) { return t.vocab->add_bos(); })
        .def_property_readonly("add_eos", [](const Tokenizer& t) { return t.vocab->add_eos(); })
        .def_property_readonly("model", [](const Tokenizer& t) { return t.vocab->model_name(); })
        .def_property_readonly("pre", [](const Tokenizer& t) { return t.vocab->pre_name(); });

    py::class_<ffnskip::Utf8Stream>(m, "_Utf8Stream", "UTF-8 reassembly for streamed token pieces (test hook)")
        .def(py::init<>())
        .def("push", [](ffnskip::Utf8Stream& s, const py::bytes& b) { return utf8_replace(s.push(std::string(b))); },
             py::arg("data"))
        .def("flush", [](ffnskip::Utf8Stream& s) { return utf8_replace(s.flush()); });
}

}  // namespace ffnskip_py
