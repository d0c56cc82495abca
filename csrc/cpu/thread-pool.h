// A persistent pool of worker threads. parallel_for hands each thread one share
// of [0, n) and returns when all are done; no thread is created per call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ffnskip {

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads);   // n_threads includes the calling thread
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int n_threads() const { return n_threads_; }
    // fn(thread_index, begin, end) over a split of [0, n) into contiguous ranges,
    // each a multiple of `grain` (except the last).
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn);
    // fn(thread_index, n_threads) on every thread.
    void run_on_all(const std::function<void(int, int)>& fn);

  private:
    void worker(int index);

    int n_threads_;
    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable wake_;
    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    bool stop_ = false;
};

int default_thread_count();   // physical cores available to this process

}  // namespace ffnskip
