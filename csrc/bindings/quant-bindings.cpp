#include "bindings/bindings.h"

namespace ffnskip_py {
void bind_quant(pybind11::module_& m) {}
}  // namespace ffnskip_py
