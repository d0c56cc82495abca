#include "cpu/thread-pool.h"

#include <sched.h>

#include <algorithm>

namespace ffnskip {

static inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    stop_.store(true);
    claim_.store(make_claim(generation_ + 1, 0));   // spinning workers see a change
    {
        std::lock_guard<std::mutex> lock(mutex_);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run_chunks(int index, uint32_t generation) {
    for (;;) {
        // The chunk count comes from the claim word itself, not from job_chunks_: a
        // worker leaving job G may read the claim word of G after the caller has
        // already written the fields of job G+1 but not yet published it; judged by
        // G+1's larger chunk count, the exhausted word of G looked claimable, the
        // claim succeeded, and G+1's chunk ran twice (its second run counted in
        // done_, so the caller could return while it still ran).
        uint64_t c = claim_.load(std::memory_order_acquire);
        if (claim_generation(c) != generation) return;
        const int64_t i = claim_next(c);
        if (i >= claim_chunks(c)) return;
        if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
        // The claim read the word published after this job's fields: they are this job's.
        const int64_t chunk = job_chunk_.load(std::memory_order_relaxed);
        const int64_t b = i * chunk;
        const int64_t e = std::min(job_n_.load(std::memory_order_relaxed), b + chunk);
        job_call_.load(std::memory_order_relaxed)(job_fn_.load(std::memory_order_relaxed), index, b, e);
        done_.fetch_add(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::worker(int index) {
    uint32_t seen = 0;
    // seq_cst: after sleepers_ goes up, this load and the caller's claim_ store then
    // sleepers_ load cannot both miss each other.
    auto fresh = [&] { return claim_generation(claim_.load()) != seen; };
    for (;;) {
        // Decode issues a job every few microseconds: spin first, then give the core
        // away (an oversubscribed machine needs it), then sleep until woken.
        bool got = false;
        for (int spin = 0; spin < 2048 && !(got = fresh()); spin++) cpu_relax();
        for (int y = 0; y < 64 && !got; y++) {
            sched_yield();
            got = fresh();
        }
        if (!got) {
            sleepers_.fetch_add(1);
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return fresh() || stop_.load(); });
            sleepers_.fetch_sub(1);
        }
        if (stop_.load()) return;
        seen = claim_generation(claim_.load(std::memory_order_acquire));
        run_chunks(index, seen);
    }
}

void ThreadPool::run(int64_t n, int64_t grain, Trampoline call, const void* fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    // About 8 chunks per thread: small enough to even out threads that start late or
    // run slower, large enough that claiming costs nothing measurable.
    const int64_t target = int64_t(n_threads_) * 8;
    int64_t chunk = (n + target - 1) / target;
    // The claim word holds the chunk count in 16 bits.
    chunk = std::max(chunk, (n + CLAIM_MAX_CHUNKS - 1) / CLAIM_MAX_CHUNKS);
    chunk = std::max(grain, (chunk + grain - 1) / grain * grain);
    const int64_t chunks = (n + chunk - 1) / chunk;
    if (n_threads_ == 1 || chunks == 1) {
        call(fn, 0, 0, n);
        return;
    }
    job_call_.store(call, std::memory_order_relaxed);
    job_fn_.store(fn, std::memory_order_relaxed);
    job_n_.store(n, std::memory_order_relaxed);
    job_chunk_.store(chunk, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_++;
    claim_.store(make_claim(generation_, chunks));   // seq_cst: pairs with the sleepers_ check
    if (sleepers_.load() > 0) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        wake_.notify_all();
    }
    run_chunks(0, generation_);
    // Chunks claimed by workers may still be running.
    for (int spin = 0; done_.load(std::memory_order_acquire) < chunks; spin++) {
        if (spin % 64 == 63) sched_yield();
        else cpu_relax();
    }
}

int default_thread_count() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? (int)n : 1;
}

}  // namespace ffnskip
