#include "run-params.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cpu/thread-pool.h"

namespace ffnskip {

RunParams resolve_run_params(const HParams& hp, RunParams p) {
    if (p.n_ctx < 0) throw std::invalid_argument("n_ctx must be >= 0 (0 = the model's, at most 4096), got " + std::to_string(p.n_ctx));
    if (p.n_ctx == 0) p.n_ctx = std::min(hp.n_ctx_train, 4096);
    if (p.n_ctx > (1 << 20)) throw std::invalid_argument("n_ctx " + std::to_string(p.n_ctx) + " is larger than 1048576");
    if (p.n_threads < 0) throw std::invalid_argument("n_threads must be >= 0 (0 = all cores), got " + std::to_string(p.n_threads));
    if (p.n_threads_batch < 0) throw std::invalid_argument("n_threads_batch must be >= 0, got " + std::to_string(p.n_threads_batch));
    if (p.n_threads > 1024 || p.n_threads_batch > 1024) throw std::invalid_argument("n_threads is larger than 1024");
    if (p.n_batch < 1) throw std::invalid_argument("n_batch must be >= 1, got " + std::to_string(p.n_batch));
    if (p.n_threads == 0) p.n_threads = default_thread_count();
    if (p.n_threads_batch == 0) p.n_threads_batch = p.n_threads;
    p.n_batch = std::min(p.n_batch, p.n_ctx);
    return p;
}

}  // namespace ffnskip
