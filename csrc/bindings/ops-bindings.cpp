// CPU forward-pass kernels: test hooks (leading underscore) that run one kernel on
// numpy arrays with whichever path simd_level() selects.
#include <pybind11/numpy.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "cpu/ops.h"

namespace py = pybind11;

namespace ffnskip_py {

using float_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

static void check_2d(const float_array& a, const char* what) {
    if (a.ndim() != 2) throw std::invalid_argument(std::string(what) + ": expected a 2-d array");
}

void bind_ops(py::module_& m) {
    m.def(
        "_vec_exp",
        [](const float_array& x) {
            py::array_t<float> out(x.size());
            ffnskip::vec_exp(out.mutable_data(), x.data(), (int64_t)x.size());
            return out;
        },
        py::arg("x"), "exp of each element (flattened), by the forward pass's kernel.");

    m.def(
        "_rmsnorm",
        [](const float_array& x, const float_array& w, float eps) {
            if (x.size() != w.size() || x.size() == 0) throw std::invalid_argument("_rmsnorm: x and w must be equal, non-empty sizes");
            py::array_t<float> out(x.size());
            ffnskip::rmsnorm(out.mutable_data(), x.data(), w.data(), (int64_t)x.size(), eps);
            return out;
        },
        py::arg("x"), py::arg("w"), py::arg("eps"), "x / sqrt(mean(x^2) + eps) * w, by the forward pass's kernel.");

    m.def(
        "_swiglu",
        [](const float_array& gate, const float_array& up) {
            if (gate.size() != up.size()) throw std::invalid_argument("_swiglu: gate and up differ in size");
            py::array_t<float> out(gate.size());
            ffnskip::swiglu(out.mutable_data(), gate.data(), up.data(), (int64_t)gate.size());
            return out;
        },
        py::arg("gate"), py::arg("up"), "silu(gate) * up (flattened), by the forward pass's kernel.");

    m.def(
        "_attend",
        [](const float_array& q, const float_array& k, const float_array& v, int n_keys0) {
            check_2d(q, "_attend q");
            check_2d(k, "_attend k");
            check_2d(v, "_attend v");
            const int n_q = (int)q.shape(0), hd = (int)q.shape(1), n_k = (int)k.shape(0);
            if (n_q < 1 || hd < 1) throw std::invalid_argument("_attend: q must have at least one row and column");
            if (k.shape(1) != hd || v.shape(1) != hd || v.shape(0) != n_k) {
                throw std::invalid_argument("_attend: k and v must both be (n_keys, head_dim) with q's head_dim");
            }
            if (n_keys0 < 1 || n_keys0 + n_q - 1 > n_k) {
                throw std::invalid_argument("_attend: the last query sees n_keys0 + n_q - 1 = " +
                                            std::to_string(n_keys0 + n_q - 1) + " keys, k has " + std::to_string(n_k));
            }
            // Rows padded to a multiple of 8 as the kernels expect.
            const size_t rows = ((size_t)n_k + 7) / 8 * 8;
            std::vector<float> kp(rows * hd, 0.0f), vp(rows * hd, 0.0f), scores(n_q * rows);
            std::copy(k.data(), k.data() + k.size(), kp.begin());
            std::copy(v.data(), v.data() + v.size(), vp.begin());
            py::array_t<float> out({n_q, hd});
            const ffnskip::AttnKernels ak = ffnskip::attn_kernels(hd);
            ffnskip::attend(ak, q.data(), hd, n_q, n_keys0, kp.data(), vp.data(), hd, 1.0f / std::sqrt((float)hd),
                            scores.data(), rows, out.mutable_data(), hd);
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_keys0"),
        "Causal attention of one head (query i sees keys [0, n_keys0 + i)), scaled by 1/sqrt(head_dim).");
}

}  // namespace ffnskip_py
