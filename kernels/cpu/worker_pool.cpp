#include "worker_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace nimbus::kernels {
namespace {

// How long a helper keeps watching for the next region after finishing one before it sleeps:
// waking a sleeping thread takes tens of microseconds (more in a virtual machine), as long as a
// small layer, and the layers of a model follow each other microseconds apart.
constexpr std::chrono::microseconds kSpin{200};

// One step of a busy wait: tells the core that this thread only polls, which frees its
// resources for the sibling hyperthread.
inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#else
    std::this_thread::yield();
#endif
}

// The handoff between the calling thread and the helpers is lock-free: the caller publishes
// the task and wakes only helpers that went to sleep, and waits for the helpers by polling,
// since they finish within one work item of it. Blocking on a condition variable there cost
// 20-25 us per region here (a futex wake-up in a virtual machine), five times a small GEMM.
class WorkerPool {
public:
    WorkerPool() {
        // Each helper starts from generation 0, not from the one it reads once running: a
        // thread that the OS starts late would otherwise skip the regions already published,
        // among them the first one (the first two-thread multiply peak of a process read as one
        // thread's, 1.08 for 2.17 TOPS on AVX512-VNNI).
        for (std::size_t index = 0; index < workers_; ++index) {
            std::thread(&WorkerPool::work, this, std::uint64_t{0}).detach();
        }
    }

    std::size_t size() const { return workers_; }

    // Returns false, without calling `task`, when another region holds the pool.
    bool try_run(std::size_t helpers, const std::function<void()>& task) {
        std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
        if (!region.owns_lock()) {
            return false;
        }
        task_.store(&task, std::memory_order_relaxed);
        unclaimed_.store(helpers);  // publishes task_ to the helper whose claim reads this
        generation_.fetch_add(1);
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(sleep_mutex_);
            wake_.notify_all();
        }
        task();
        // Helpers that have not claimed a share yet are not waited for: the work is done. One
        // that claimed counted itself in running_ before its claim, so it is seen here.
        unclaimed_.store(0);
        while (running_.load() != 0) {
            relax();
        }
        return true;
    }

private:
    void work(std::uint64_t seen) {
        for (;;) {
            wait_for_region(seen);
            seen = generation_.load();
            running_.fetch_add(1);
            std::size_t left = unclaimed_.load();
            while (left > 0 && !unclaimed_.compare_exchange_weak(left, left - 1)) {
            }
            if (left > 0) {
                (*task_.load(std::memory_order_relaxed))();
            }
            running_.fetch_sub(1);
        }
    }

    // Returns once the generation differs from `seen`: polls for kSpin, then sleeps.
    void wait_for_region(std::uint64_t seen) {
        const auto until = std::chrono::steady_clock::now() + kSpin;
        for (unsigned polls = 1; generation_.load(std::memory_order_relaxed) == seen; ++polls) {
            relax();
            if (polls % 64 == 0 && std::chrono::steady_clock::now() >= until) {
                break;
            }
        }
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        // Counted before the generation is read again (both sequentially consistent), so a
        // caller that bumps the generation after that read sees a sleeper and notifies.
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        sleepers_.fetch_sub(1);
    }

    const std::size_t workers_ = std::thread::hardware_concurrency() > 1
                                     ? std::thread::hardware_concurrency() - 1
                                     : 0;
    std::mutex region_mutex_;
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::atomic<const std::function<void()>*> task_{nullptr};
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<std::size_t> unclaimed_{0};  // helpers still wanted by the current region
    std::atomic<std::size_t> running_{0};    // helpers between a claim attempt and its end
    std::atomic<std::size_t> sleepers_{0};
};

}  // namespace

void run_on_pool(std::size_t helpers, const std::function<void()>& task) {
    // Created on first use and never destroyed, since its detached threads use it until exit.
    static WorkerPool* const pool = new WorkerPool();
    const std::size_t used = std::min(helpers, pool->size());
    if (used == 0 || !pool->try_run(used, task)) {
        task();
    }
}

void parallel_for(std::size_t count, std::size_t threads,
                  const std::function<void(std::size_t)>& body) {
    if (count == 0) {
        return;
    }
    std::atomic<std::size_t> next_item{0};
    run_on_pool(std::min(std::max<std::size_t>(threads, 1), count) - 1, [&] {
        for (std::size_t item = next_item++; item < count; item = next_item++) {
            body(item);
        }
    });
}

}  // namespace nimbus::kernels
