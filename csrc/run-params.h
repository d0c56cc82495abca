// The context and thread settings that Session and BatchSession share: checked, with
// their defaults filled in.
#pragma once

#include <cstdint>

#include <ffnskip/ffnskip.h>

namespace ffnskip {

struct RunParams {
    int32_t n_ctx = 0;            // KV cache rows (per sequence); 0 = min(n_ctx_train, 4096)
    int32_t n_threads = 0;        // 0 = all cores
    int32_t n_threads_batch = 0;  // 0 = n_threads
    int32_t n_batch = 512;        // prompt tokens per forward pass, at most n_ctx
};

// Throws std::invalid_argument naming the setting that is out of range.
RunParams resolve_run_params(const HParams& hp, RunParams p);

// The same, in place on a params struct with these four fields (SessionParams, BatchParams).
template <class Params>
void resolve_run_fields(const HParams& hp, Params& p) {
    const RunParams r = resolve_run_params(hp, {p.n_ctx, p.n_threads, p.n_threads_batch, p.n_batch});
    p.n_ctx = r.n_ctx;
    p.n_threads = r.n_threads;
    p.n_threads_batch = r.n_threads_batch;
    p.n_batch = r.n_batch;
}

}  // namespace ffnskip
