// BatchSession: batched decoding of several sequences. Long native calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <ffnskip/ffnskip.h>

#include "bindings/bindings.h"

namespace py = pybind11;
using namespace ffnskip;

namespace ffnskip_py {

void bind_batch(py::module_& m) {
    py::class_<BatchParams>(m, "BatchParams")
        .def(py::init<>())
        .def_readwrite("n_seq", &BatchParams::n_seq)
        .def_readwrite("n_ctx", &BatchParams::n_ctx)
        .def_readwrite("n_threads", &BatchParams::n_threads)
        .def_readwrite("n_threads_batch", &BatchParams::n_threads_batch)
        .def_readwrite("n_batch", &BatchParams::n_batch)
        .def_readwrite("n_prefill_chunk", &BatchParams::n_prefill_chunk)
        .def_readwrite("backend", &BatchParams::backend)
        .def_readwrite("skip_alignment", &BatchParams::skip_alignment);

    py::class_<BatchStats>(m, "BatchStats")
        .def_readonly("n_steps", &BatchStats::n_steps)
        .def_readonly("ffn_bytes", &BatchStats::ffn_bytes)
        .def_readonly("ffn_bytes_read", &BatchStats::ffn_bytes_read)
        .def_readonly("surrogate_bytes_read", &BatchStats::surrogate_bytes_read)
        .def_property_readonly("ffn_read_saved", &BatchStats::ffn_read_saved);

    py::class_<BatchSession>(m, "BatchSession")
        .def(py::init([](std::shared_ptr<Model> model, const BatchParams& params) {
                 py::gil_scoped_release release;
                 return std::make_unique<BatchSession>(model, params);
             }),
             py::arg("model"), py::arg("params") = BatchParams{})
        .def_property_readonly("n_seq", &BatchSession::n_seq)
        .def_property_readonly("n_ctx", &BatchSession::n_ctx)
        .def_property_readonly("n_active", &BatchSession::n_active)
        .def("add_sequence", &BatchSession::add_sequence, py::arg("prompt"), py::arg("skip") = SkipConfig{},
             py::call_guard<py::gil_scoped_release>(),
             "Evaluate a prompt in a free slot under the sequence's skip policy; returns its id.")
        .def("join_sequence", &BatchSession::join_sequence, py::arg("prompt"), py::arg("skip") = SkipConfig{},
             "Take a free slot for a prompt without evaluating it (see prefill); returns the id.")
        .def("prefill", &BatchSession::prefill, py::arg("seq"), py::arg("max_tokens"),
             py::call_guard<py::gil_scoped_release>(),
             "Evaluate up to max_tokens more prompt tokens; returns how many are left.")
        .def("n_pending", &BatchSession::n_pending, py::arg("seq"))
        .def("remove_sequence", &BatchSession::remove_sequence, py::arg("seq"))
        .def("has_sequence", &BatchSession::has_sequence, py::arg("seq"))
        .def("sequences", &BatchSession::sequences)
        .def("n_past", &BatchSession::n_past, py::arg("seq"))
        .def("skip_stats", &BatchSession::skip_stats, py::arg("seq"), py::return_value_policy::copy)
        .def_property_readonly("skip_alignment", &BatchSession::skip_alignment)
        .def("stats", &BatchSession::stats, py::return_value_policy::copy,
             "Weight bytes the decode steps so far read (FFN and surrogate).")
        .def("step", [](BatchSession& self, const std::vector<std::pair<int32_t, int32_t>>& pairs) {
            const size_t n_vocab = (size_t)self.model().n_vocab();
            py::array_t<float> out(std::vector<size_t>{pairs.size(), n_vocab});
            {
                py::gil_scoped_release release;
                const std::vector<float>& logits = self.step(pairs);
                std::copy(logits.begin(), logits.end(), out.mutable_data());
            }
            return out;
        }, py::arg("pairs"), "One decode step for (seq, token) pairs; returns (len(pairs), n_vocab) logits.")
        .def("last_logits", [](const BatchSession& self, int32_t seq) {
            const std::vector<float>& l = self.last_logits(seq);
            py::array_t<float> out(l.size());
            std::copy(l.begin(), l.end(), out.mutable_data());
            return out;
        }, py::arg("seq"));

    py::class_<BatchGenerator>(m, "BatchGenerator")
        .def(py::init([](std::shared_ptr<Model> model, const BatchParams& params) {
                 py::gil_scoped_release release;
                 return std::make_unique<BatchGenerator>(model, params);
             }),
             py::arg("model"), py::arg("params") = BatchParams{})
        .def_property_readonly("n_seq", &BatchGenerator::n_seq)
        .def_property_readonly("n_ctx", &BatchGenerator::n_ctx)
        .def_property_readonly("n_active", &BatchGenerator::n_active)
        .def_property("skip_config", &BatchGenerator::skip_config, &BatchGenerator::set_skip_config)
        .def("submit", &BatchGenerator::submit, py::arg("prompt"), py::arg("params"),
             "Add a request; its prompt is evaluated by the next steps. Returns its id.")
        .def("step", [](BatchGenerator& self) {
            std::vector<BatchGenerator::Update> updates;
            {
                py::gil_scoped_release release;
                updates = self.step();
            }
            py::list out;
            for (const BatchGenerator::Update& u : updates) out.append(py::make_tuple(u.id, py::bytes(u.piece), u.finished));
            return out;
        }, "One round: prompt chunks, one batched decode step, a sample each. Returns [(id, piece bytes, finished)].")
        .def("cancel", &BatchGenerator::cancel, py::arg("id"))
        .def("take_result", &BatchGenerator::take_result, py::arg("id"));
}

}  // namespace ffnskip_py
