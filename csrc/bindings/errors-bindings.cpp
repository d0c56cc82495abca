// Maps the engine's C++ exceptions to Python ones, once, at the binding edge.
#include <ffnskip/ffnskip.h>

#include "bindings/bindings.h"

namespace py = pybind11;

namespace ffnskip_py {
void bind_errors(py::module_& m) {
    // FfnskipError(RuntimeError) for engine errors; FormatError also is a ValueError,
    // so `except ValueError` catches a corrupt file as users expect.
    static py::exception<ffnskip::Error> base(m, "FfnskipError", PyExc_RuntimeError);
    static py::handle format_error;
    {
        py::object bases = py::make_tuple(base, py::handle(PyExc_ValueError));
        py::dict ns;
        format_error = PyErr_NewException("ffnskip._core.FormatError", bases.ptr(), nullptr);
        m.attr("FormatError") = py::reinterpret_borrow<py::object>(format_error);
    }
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ffnskip::FileNotFoundError& e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        } catch (const ffnskip::FormatError& e) {
            PyErr_SetString(format_error.ptr(), e.what());
        } catch (const ffnskip::Error& e) {
            PyErr_SetString(base.ptr(), e.what());
        }
    });
}
}  // namespace ffnskip_py
