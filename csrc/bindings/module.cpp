// The native module `ffnskip._core`. Bindings are thin: argument conversion only.
#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "ffnskip native core";
    ffnskip_py::bind_errors(m);
    ffnskip_py::bind_quant(m);
    ffnskip_py::bind_ops(m);
    ffnskip_py::bind_gguf(m);
    ffnskip_py::bind_tokenizer(m);
    ffnskip_py::bind_model(m);
    ffnskip_py::bind_batch(m);
}
