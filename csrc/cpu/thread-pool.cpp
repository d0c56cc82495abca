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
    claim_.store(uint64_t(generation_ + 1) << 32);   // spinning workers see a change
    {
        std::lock_guard<std::mutex> lock(mutex_);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run_chunks(int index, uint32_t generation) {
    for (;;) {
        uint64_t c = claim_.load(std::memory_order_acquire);
        if (uint32_t(c >> 32) != generation) return;
        const int64_t i = int64_t(c & 0xffffffffu);
        if (i >= job_chunks_.load(std::memory_order_relaxed)) return;
        if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
        const int64_t chunk = job_chunk_.load(std::memory_order_relaxed);
        const int64_t b = i * chunk;
        const int64_t e = std::min(job_n_.load(std::memory_order_relaxed), b + chunk);
        job_call_.load(std::memory_order_relaxed)(job_fn_.load(std::memory_order_relaxed), index, b, e);
        done_.fetch_add(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::worker(int index) {
    uint32_t seen = 0;
    auto fresh = [&] { return uint32_t(claim_.load(std::memory_order_acquire) >> 32) != seen; };
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
        seen = uint32_t(claim_.load(std::memory_order_acquire) >> 32);
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
    job_chunks_.store(chunks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_++;
    claim_.store(uint64_t(generation_) << 32);   // seq_cst: pairs with the sleepers_ check
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
