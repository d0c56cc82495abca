// Model and Session. Long native calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>

#include <ffnskip/ffnskip.h>

#include "bindings/bindings.h"

namespace py = pybind11;
using namespace ffnskip;

namespace ffnskip_py {
namespace {

py::str decode_utf8(const std::string& s) {
    return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t)s.size(), "replace"));
}

py::array_t<float> to_numpy(const float* data, size_t rows, size_t cols) {
    py::array_t<float> out(rows == 0 ? std::vector<size_t>{cols} : std::vector<size_t>{rows, cols});
    std::copy(data, data + (rows ? rows : 1) * cols, out.mutable_data());
    return out;
}

// The native calls release the GIL, so two Python threads could run inside one
// Session at once and corrupt it. A Session from Python takes this flag for each
// call; a second thread gets an exception instead of a data race.
struct GuardedSession : Session {
    using Session::Session;
    std::atomic<bool> busy{false};
};

class Busy {
  public:
    explicit Busy(GuardedSession& s) : flag_(s.busy) {
        if (flag_.exchange(true, std::memory_order_acquire))
            throw Error("Session is busy in another thread: a Session runs one call at a time "
                        "(use one Session per thread)");
    }
    ~Busy() { flag_.store(false, std::memory_order_release); }
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;

  private:
    std::atomic<bool>& flag_;
};

}  // namespace

void bind_model(py::module_& m) {
    m.def("available_backends", &available_backends, "Backends compiled into this build.");
    m.def("build_info", &build_info, "Compiler, SIMD path and backends of this build.");

    py::class_<HParams>(m, "HParams")
        .def_readonly("architecture", &HParams::architecture)
        .def_readonly("n_vocab", &HParams::n_vocab)
        .def_readonly("n_ctx_train", &HParams::n_ctx_train)
        .def_readonly("n_embd", &HParams::n_embd)
        .def_readonly("n_layer", &HParams::n_layer)
        .def_readonly("n_head", &HParams::n_head)
        .def_readonly("n_head_kv", &HParams::n_head_kv)
        .def_readonly("head_dim", &HParams::head_dim)
        .def_readonly("n_ff", &HParams::n_ff)
        .def_readonly("n_rot", &HParams::n_rot)
        .def_readonly("rope_freq_base", &HParams::rope_freq_base)
        .def_readonly("rope_freq_scale", &HParams::rope_freq_scale)
        .def_readonly("rms_eps", &HParams::rms_eps);

    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const std::string& path) {
                 py::gil_scoped_release release;
                 return Model::load(path);
             }),
             py::arg("path"))
        .def_property_readonly("hparams", &Model::hparams, py::return_value_policy::reference_internal)
        .def_property_readonly("path", &Model::path)
        .def_property_readonly("file_size", &Model::file_size)
        .def_property_readonly("weight_bytes", &Model::weight_bytes)
        .def_property_readonly("n_vocab", &Model::n_vocab)
        .def_property_readonly("bos", &Model::token_bos)
        .def_property_readonly("eos", &Model::token_eos)
        .def("metadata", &Model::metadata)
        .def("metadata_string", &Model::metadata_string, py::arg("key"))
        .def("tensors", [](const Model& self) {
            py::list out;
            for (const auto& t : self.tensors()) {
                py::dict d;
                d["name"] = t.name;
                d["type"] = t.type;
                d["shape"] = t.shape;
                d["offset"] = t.offset;
                d["n_bytes"] = t.n_bytes;
                out.append(d);
            }
            return out;
        })
        .def("tokenize", &Model::tokenize, py::arg("text"), py::arg("add_special") = true,
             py::arg("parse_special") = false, py::call_guard<py::gil_scoped_release>())
        .def("token_to_piece", [](const Model& self, int32_t token, bool render_special) {
            return py::bytes(self.token_to_piece(token, render_special));
        }, py::arg("token"), py::arg("render_special") = true)
        .def("detokenize", [](const Model& self, const std::vector<int32_t>& ids, bool render_special) {
            return decode_utf8(self.detokenize(ids, render_special));
        }, py::arg("tokens"), py::arg("render_special") = true)
        .def("is_eog", &Model::token_is_eog, py::arg("token"));

    py::class_<SkipConfig>(m, "SkipConfig")
        .def(py::init<>())
        .def_property("policy", [](const SkipConfig& c) { return std::string(skip_policy_name(c.policy)); },
                      [](SkipConfig& c, const std::string& name) { c.policy = skip_policy_from_name(name); })
        .def_readwrite("threshold", &SkipConfig::threshold)
        .def_readwrite("cold_start", &SkipConfig::cold_start)
        .def_readwrite("cold_end", &SkipConfig::cold_end)
        .def_readwrite("warmup", &SkipConfig::warmup)
        .def_readwrite("refresh_every", &SkipConfig::refresh_every)
        .def_readwrite("max_skip", &SkipConfig::max_skip)
        .def_readwrite("target_ratio", &SkipConfig::target_ratio)
        .def_readwrite("skipdecode_span", &SkipConfig::skipdecode_span)
        .def_readwrite("seed", &SkipConfig::seed)
        .def_readwrite("layers", &SkipConfig::layers)
        .def_readwrite("record_masks", &SkipConfig::record_masks)
        .def_readwrite("record_cosines", &SkipConfig::record_cosines)
        .def_readwrite("surrogates", &SkipConfig::surrogates);

    py::class_<SkipStats>(m, "SkipStats")
        .def_readonly("n_layer", &SkipStats::n_layer)
        .def_readonly("n_steps", &SkipStats::n_steps)
        .def_readonly("n_steps_after_warmup", &SkipStats::n_steps_after_warmup)
        .def_readonly("ffn_total", &SkipStats::ffn_total)
        .def_readonly("ffn_skipped", &SkipStats::ffn_skipped)
        .def_readonly("ffn_total_after_warmup", &SkipStats::ffn_total_after_warmup)
        .def_readonly("ffn_skipped_after_warmup", &SkipStats::ffn_skipped_after_warmup)
        .def_readonly("layers_skipped", &SkipStats::layers_skipped)
        .def_readonly("surrogates_run", &SkipStats::surrogates_run)
        .def_readonly("skipped_per_layer", &SkipStats::skipped_per_layer)
        .def_property_readonly("skip_ratio", &SkipStats::skip_ratio)
        .def_property_readonly("skip_ratio_after_warmup", &SkipStats::skip_ratio_after_warmup)
        .def_property_readonly("masks", [](const SkipStats& st) {
            py::array_t<uint8_t> out(std::vector<size_t>{(size_t)st.n_steps, st.masks.empty() ? 0 : (size_t)st.n_layer});
            std::copy(st.masks.begin(), st.masks.end(), out.mutable_data());
            return out;
        })
        .def_property_readonly("cosines", [](const SkipStats& st) {
            py::array_t<float> out(std::vector<size_t>{(size_t)st.n_steps, st.cosines.empty() ? 0 : (size_t)st.n_layer});
            std::copy(st.cosines.begin(), st.cosines.end(), out.mutable_data());
            return out;
        });

    py::class_<SessionParams>(m, "SessionParams")
        .def(py::init<>())
        .def_readwrite("n_ctx", &SessionParams::n_ctx)
        .def_readwrite("n_threads", &SessionParams::n_threads)
        .def_readwrite("n_threads_batch", &SessionParams::n_threads_batch)
        .def_readwrite("n_batch", &SessionParams::n_batch)
        .def_readwrite("skip", &SessionParams::skip)
        .def_readwrite("backend", &SessionParams::backend);

    py::class_<SamplingParams>(m, "SamplingParams")
        .def(py::init<>())
        .def_readwrite("temperature", &SamplingParams::temperature)
        .def_readwrite("top_k", &SamplingParams::top_k)
        .def_readwrite("top_p", &SamplingParams::top_p)
        .def_readwrite("min_p", &SamplingParams::min_p)
        .def_readwrite("repeat_penalty", &SamplingParams::repeat_penalty)
        .def_readwrite("repeat_last_n", &SamplingParams::repeat_last_n)
        .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
        .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
        .def_readwrite("seed", &SamplingParams::seed);

    py::class_<GenerateParams>(m, "GenerateParams")
        .def(py::init<>())
        .def_readwrite("max_tokens", &GenerateParams::max_tokens)
        .def_readwrite("sampling", &GenerateParams::sampling)
        .def_readwrite("stop", &GenerateParams::stop)
        .def_readwrite("ignore_eos", &GenerateParams::ignore_eos)
        .def_readwrite("add_special", &GenerateParams::add_special)
        .def_readwrite("parse_special", &GenerateParams::parse_special)
        .def_readwrite("use_session_skip", &GenerateParams::use_session_skip)
        .def_readwrite("skip", &GenerateParams::skip);

    py::class_<Stats>(m, "Stats")
        .def_readonly("n_prompt_tokens", &Stats::n_prompt_tokens)
        .def_readonly("n_cached_tokens", &Stats::n_cached_tokens)
        .def_readonly("n_generated", &Stats::n_generated)
        .def_readonly("prompt_seconds", &Stats::prompt_seconds)
        .def_readonly("decode_seconds", &Stats::decode_seconds)
        .def_property_readonly("prompt_tokens_per_second", &Stats::prompt_tokens_per_second)
        .def_property_readonly("decode_tokens_per_second", &Stats::decode_tokens_per_second)
        .def_readonly("skip", &Stats::skip);

    py::class_<GenerateResult>(m, "GenerateResult")
        .def_property_readonly("text", [](const GenerateResult& r) { return decode_utf8(r.text); })
        .def_readonly("prompt_tokens", &GenerateResult::prompt_tokens)
        .def_readonly("tokens", &GenerateResult::tokens)
        .def_property_readonly("finish_reason", [](const GenerateResult& r) { return finish_reason_name(r.finish_reason); })
        .def_readonly("stats", &GenerateResult::stats);

    using GS = GuardedSession;
    py::class_<GS>(m, "Session")
        .def(py::init([](std::shared_ptr<Model> model, const SessionParams& params) {
                 py::gil_scoped_release release;
                 return std::make_unique<GS>(model, params);
             }),
             py::arg("model"), py::arg("params") = SessionParams{})
        .def_property_readonly("n_ctx", [](const GS& self) { return self.n_ctx(); })
        .def_property_readonly("backend", [](const GS& self) { return self.backend(); })
        .def_property_readonly("n_past", [](GS& self) { Busy busy(self); return self.n_past(); })
        .def("begin", [](GS& self, const std::string& prompt, const GenerateParams& params) {
            Busy busy(self);
            py::gil_scoped_release release;
            self.begin(prompt, params);
        }, py::arg("prompt"), py::arg("params"))
        .def("begin_tokens", [](GS& self, const std::vector<int32_t>& tokens, const GenerateParams& params) {
            Busy busy(self);
            py::gil_scoped_release release;
            self.begin_tokens(tokens, params);
        }, py::arg("tokens"), py::arg("params"))
        .def("step", [](GS& self) {
            std::string piece;
            bool more;
            {
                Busy busy(self);
                py::gil_scoped_release release;
                more = self.step(piece);
            }
            return py::make_tuple(more, py::bytes(piece));
        }, "Evaluate one token; returns (more, text bytes).")
        .def_property_readonly("finished", [](GS& self) { Busy busy(self); return self.finished(); })
        .def("cancel", [](GS& self) { Busy busy(self); self.cancel(); })
        .def("result", [](GS& self) { Busy busy(self); return self.result(); })
        .def("eval", [](GS& self, const std::vector<int32_t>& tokens, bool all_logits) {
            Busy busy(self);
            std::vector<float> all;
            const float* last;
            {
                py::gil_scoped_release release;
                last = self.eval(tokens, all_logits ? &all : nullptr);
            }
            const size_t n_vocab = (size_t)self.model().n_vocab();
            return all_logits ? to_numpy(all.data(), tokens.size(), n_vocab) : to_numpy(last, 0, n_vocab);
        }, py::arg("tokens"), py::arg("all_logits") = false,
           "Append tokens to the KV cache; return the last token's logits (or every token's).")
        .def_property_readonly("last_logits", [](GS& self) {
            Busy busy(self);
            const auto& l = self.last_logits();
            return to_numpy(l.data(), 0, l.size());
        })
        .def("reset", [](GS& self) { Busy busy(self); self.reset(); })
        .def_property("skip_config", [](GS& self) { Busy busy(self); return self.skip_config(); },
                      [](GS& self, const SkipConfig& skip) { Busy busy(self); self.set_skip_config(skip); })
        .def("score_continuation", [](GS& self, const std::vector<int32_t>& prompt,
                                      const std::vector<int32_t>& continuation, const SkipConfig& skip) {
            Busy busy(self);
            SkipStats stats;
            double nll;
            {
                py::gil_scoped_release release;
                nll = self.score_continuation(prompt, continuation, skip, &stats);
            }
            return py::make_tuple(nll, stats);
        }, py::arg("prompt"), py::arg("continuation"), py::arg("skip"),
           "Teacher-forced -log likelihood of continuation after prompt, skipping as in generation; (nll, SkipStats).")
        .def("trace_ffn", [](GS& self, const std::vector<int32_t>& tokens, const SkipConfig& skip) {
            Busy busy(self);
            Session::FfnTrace trace;
            {
                py::gil_scoped_release release;
                trace = self.trace_ffn(tokens, skip);
            }
            auto as_array = [&](std::vector<float>& v) {
                py::array_t<float> out(std::vector<size_t>{(size_t)trace.n_layer, (size_t)trace.n_tokens, (size_t)trace.n_embd});
                std::copy(v.begin(), v.end(), out.mutable_data());
                return out;
            };
            py::dict d;
            d["h"] = as_array(trace.h);
            d["u"] = as_array(trace.u);
            d["f"] = as_array(trace.f);
            return d;
        }, py::arg("tokens"), py::arg("skip"),
           "Evaluate tokens as one prompt from an empty cache; per layer the residual before the FFN (h), "
           "the FFN input (u) and what the block added (f), each (n_layer, n_tokens, n_embd).");
}
}  // namespace ffnskip_py
