// A persistent pool of worker threads. parallel_for cuts [0, n) into chunks that the
// calling thread and the workers claim one at a time, so a worker the OS has not
// scheduled yet (an oversubscribed machine) delays nothing: the others take its share.
// No thread is created per call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
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
    // fn(thread_index, begin, end) over contiguous chunks of [0, n), each a multiple of
    // `grain` long (except the last); a thread may get several chunks, and which thread
    // runs which chunk varies from call to call. Returns when all are done.
    // Takes any callable without wrapping it in a std::function (no allocation per call).
    template <typename Fn>
    void parallel_for(int64_t n, int64_t grain, const Fn& fn) {
        run(n, grain, [](const void* f, int ith, int64_t b, int64_t e) { (*static_cast<const Fn*>(f))(ith, b, e); }, &fn);
    }

  private:
    using Trampoline = void (*)(const void* fn, int ith, int64_t begin, int64_t end);
    void run(int64_t n, int64_t grain, Trampoline call, const void* fn);
    void worker(int index);
    void run_chunks(int index, uint32_t generation);

    int n_threads_;
    std::vector<std::thread> threads_;
    uint32_t generation_ = 0;                // of the latest job; the caller's copy
    // The current job. Written only after the previous job's chunks are all done and
    // before claim_ publishes it; read only after a successful claim of this job.
    std::atomic<Trampoline> job_call_{nullptr};
    std::atomic<const void*> job_fn_{nullptr};
    std::atomic<int64_t> job_n_{0}, job_chunk_{0};
    // (generation << 32) | (chunk count << 16) | next unclaimed chunk. Everything a
    // claimer checks is in this one word, so a claim is valid for the job it read.
    std::atomic<uint64_t> claim_{0};
    static constexpr int64_t CLAIM_MAX_CHUNKS = 0xffff;
    static uint64_t make_claim(uint32_t generation, int64_t chunks) {
        return (uint64_t(generation) << 32) | (uint64_t(chunks) << 16);
    }
    static uint32_t claim_generation(uint64_t c) { return uint32_t(c >> 32); }
    static int64_t claim_chunks(uint64_t c) { return int64_t((c >> 16) & 0xffff); }
    static int64_t claim_next(uint64_t c) { return int64_t(c & 0xffff); }
    std::atomic<int64_t> done_{0};           // chunks of the current job finished
    std::atomic<int> sleepers_{0};           // workers blocked on wake_
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
};

int default_thread_count();   // physical cores available to this process

}  // namespace ffnskip
