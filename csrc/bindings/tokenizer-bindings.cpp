#include "bindings/bindings.h"

namespace ffnskip_py {
void bind_tokenizer(pybind11::module_& m) {}
}  // namespace ffnskip_py
