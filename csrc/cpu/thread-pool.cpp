#include "cpu/thread-pool.h"

#include <sched.h>

#include <algorithm>

namespace ffnskip {

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
    for (int i = 1; i < n_threads_; i++) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        // Spin briefly: decode issues a job every few microseconds, and a sleeping
        // thread costs far more to wake than a short spin.
        uint64_t gen = generation_.load(std::memory_order_acquire);
        for (int spin = 0; gen == seen && spin < 4000; spin++) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if (spin % 256 == 255) sched_yield();
            gen = generation_.load(std::memory_order_acquire);
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            gen = generation_.load();
        }
        seen = gen;
        const std::function<void(int, int)>* job;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stop_) return;
            job = job_;
        }
        (*job)(index, n_threads_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
    if (n_threads_ == 1) {
        fn(0, 1);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        job_ = &fn;
        pending_.store(n_threads_ - 1, std::memory_order_release);
        generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    wake_.notify_all();
    fn(0, n_threads_);
    // Yield now and then: on an oversubscribed machine the worker we wait for may
    // need this very core.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; spin++) {
        if (spin % 256 == 255) sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else __builtin_ia32_pause();
#endif
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    int64_t chunks = (n + grain - 1) / grain;
    if (n_threads_ == 1 || chunks == 1) {
        fn(0, 0, n);
        return;
    }
    run_on_all([&](int ith, int nth) {
        int64_t per = (chunks + nth - 1) / nth;
        int64_t b = std::min(n, ith * per * grain);
        int64_t e = std::min(n, (ith + 1) * per * grain);
        if (b < e) fn(ith, b, e);
    });
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
