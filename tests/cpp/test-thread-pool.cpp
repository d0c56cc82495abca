// The CPU thread pool: every index of every job runs exactly once, and parallel_for
// returns only after all of its chunks are finished. Jobs alternate between few and
// many chunks, back to back, because a worker still leaving the previous job while
// the caller publishes the next one is where a chunk-claiming pool goes wrong.
// FFNSKIP_POOL_JOBS sets the number of jobs per thread count (default 20000).
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "check.h"
#include "cpu/thread-pool.h"

namespace {

int jobs_per_run() {
    const char* s = std::getenv("FFNSKIP_POOL_JOBS");
    return s && *s ? std::atoi(s) : 20000;
}

// Runs `n_jobs` jobs of varying size on a pool of n_threads; returns the number of
// indices that ran other than once, or whose job returned before they finished.
int64_t pool_errors(int n_threads, int n_jobs) {
    using namespace ffnskip;
    ThreadPool pool(n_threads);
    // Sizes with tails: chunk counts of 1, 2, many; n not a multiple of the grain.
    const int64_t sizes[] = {1, 2, 3, 7, 16, 17, 33, 64, 100, 257, 5, 1000, 2, 129};
    const int64_t grains[] = {1, 16, 1, 4};
    const int64_t max_n = 1000;
    std::vector<std::atomic<int>> hits(max_n);
    std::vector<int> done(max_n);   // written by the chunk, read after the job returned
    std::atomic<int64_t> errors{0};
    for (int j = 0; j < n_jobs; j++) {
        const int64_t n = sizes[j % (sizeof(sizes) / sizeof(sizes[0]))];
        const int64_t grain = grains[(j / 3) % (sizeof(grains) / sizeof(grains[0]))];
        for (int64_t i = 0; i < n; i++) {
            hits[i].store(0, std::memory_order_relaxed);
            done[i] = 0;
        }
        const int tag = j + 1;
        pool.parallel_for(n, grain, [&](int ith, int64_t b, int64_t e) {
            if (ith < 0 || ith >= n_threads || b < 0 || e > n || b >= e) {
                errors.fetch_add(1);   // a chunk outside [0, n)
                return;
            }
            for (int64_t i = b; i < e; i++) {
                hits[i].fetch_add(1, std::memory_order_relaxed);
                done[i] = tag;
            }
        });
        for (int64_t i = 0; i < n; i++)
            if (hits[i].load(std::memory_order_relaxed) != 1 || done[i] != tag) errors++;
    }
    return errors.load();
}

}  // namespace

TEST(thread_pool_each_index_once) {
    const int n_jobs = jobs_per_run();
    for (int n_threads : {1, 2, 3, 4}) {
        const int64_t errors = pool_errors(n_threads, n_jobs);
        CHECK(errors == 0, std::to_string(errors) + " indices ran other than once with " + std::to_string(n_threads) +
                               " threads over " + std::to_string(n_jobs) + " jobs");
    }
}
