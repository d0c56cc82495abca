#include "bindings/bindings.h"

namespace ffnskip_py {
void bind_model(pybind11::module_& m) {}
}  // namespace ffnskip_py
