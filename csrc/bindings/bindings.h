// One registration function per concern; module.cpp calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace ffnskip_py {
void bind_errors(pybind11::module_& m);
void bind_quant(pybind11::module_& m);       // block formats (test hooks)
void bind_ops(pybind11::module_& m);         // CPU forward-pass kernels (test hooks)
void bind_gguf(pybind11::module_& m);        // raw GGUF inspection
void bind_tokenizer(pybind11::module_& m);   // vocabulary-only tokenizer
void bind_model(pybind11::module_& m);       // Model, Session, params, stats
void bind_batch(pybind11::module_& m);       // BatchSession (batched decoding)
}  // namespace ffnskip_py
