#include "worker_pool.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cache_line.h"

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
        for (std::size_t participant = 1; participant <= workers_; ++participant) {
            std::thread(&WorkerPool::work, this, participant, std::uint64_t{0}).detach();
        }
    }

    std::size_t size() const { return workers_; }

    // Returns false, without calling `task`, when another region holds the pool.
    bool try_run(std::size_t helpers, const std::function<void(std::size_t)>& task) {
        std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
        if (!region.owns_lock()) {
            return false;
        }
        task_.store(&task, std::memory_order_relaxed);
        for (std::size_t participant = 1; participant <= helpers; ++participant) {
            wanted_[participant].flag.store(true);  // publishes task_ to the helper that claims it
        }
        generation_.fetch_add(1);
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(sleep_mutex_);
            wake_.notify_all();
        }
        task(0);
        // Helpers that have not claimed their part yet are not waited for: the work is done.
        // One that claimed counted itself in running_ before its claim, so it is seen here.
        for (std::size_t participant = 1; participant <= helpers; ++participant) {
            wanted_[participant].flag.store(false);
        }
        while (running_.load() != 0) {
            relax();
        }
        return true;
    }

private:
    void work(std::size_t participant, std::uint64_t seen) {
        for (;;) {
            wait_for_region(seen);
            seen = generation_.load();
            running_.fetch_add(1);
            // A claim, not a read: a helper that read an older generation and claims the part
            // of a newer region finds nothing to claim when it then sees that region again.
            if (wanted_[participant].flag.exchange(false)) {
                (*task_.load(std::memory_order_relaxed))(participant);
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

    // Whether the current region still wants helper j, on a cache line of its own: helpers
    // claim their flags at the same time.
    struct alignas(kCacheLineBytes) Wanted {
        std::atomic<bool> flag{false};
    };

    const std::size_t workers_ = std::thread::hardware_concurrency() > 1
                                     ? std::thread::hardware_concurrency() - 1
                                     : 0;
    const std::unique_ptr<Wanted[]> wanted_{new Wanted[workers_ + 1]};  // by participant
    std::mutex region_mutex_;
    std::mutex sleep_mutex_;
    std::condition_variable wake_;
    std::atomic<const std::function<void(std::size_t)>*> task_{nullptr};
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<std::size_t> running_{0};  // helpers between a claim attempt and its end
    std::atomic<std::size_t> sleepers_{0};
};

// The next item of one participant's run of items, on a cache line of its own.
struct alignas(kCacheLineBytes) RunCursor {
    std::atomic<std::size_t> next{0};
};
constexpr std::size_t kStackRuns = 8;

}  // namespace

void run_on_pool(std::size_t helpers, const std::function<void(std::size_t)>& task) {
    // Created on first use and never destroyed, since its detached threads use it until exit.
    static WorkerPool* const pool = new WorkerPool();
    const std::size_t used = std::min(helpers, pool->size());
    if (used == 0 || !pool->try_run(used, task)) {
        task(0);
    }
}

void parallel_items(std::size_t count, std::size_t threads,
                    const std::function<void(std::size_t, std::size_t)>& body,
                    const std::function<void(std::size_t)>& finish) {
    if (count == 0) {
        return;
    }
    const std::size_t runs = std::min(std::max<std::size_t>(threads, 1), count);
    if (runs == 1) {  // no region to set up
        for (std::size_t item = 0; item < count; ++item) {
            body(0, item);
        }
        if (finish) {
            finish(0);
        }
        return;
    }
    const auto first = [&](std::size_t run) { return run * count / runs; };
    // On the stack for the usual few threads: a heap allocation would add to the fixed cost of
    // every small layer.
    std::array<RunCursor, kStackRuns> stack_cursors;
    std::vector<RunCursor> heap_cursors(runs > kStackRuns ? runs : 0);
    RunCursor* const cursors = runs > kStackRuns ? heap_cursors.data() : stack_cursors.data();
    for (std::size_t run = 0; run < runs; ++run) {
        cursors[run].next.store(first(run), std::memory_order_relaxed);
    }
    run_on_pool(runs - 1, [&](std::size_t participant) {
        for (std::size_t offset = 0; offset < runs; ++offset) {
            const std::size_t run = (participant + offset) % runs;
            std::atomic<std::size_t>& next = cursors[run].next;
            const std::size_t end = first(run + 1);
            for (std::size_t item = next++; item < end; item = next++) {
                body(participant, item);
            }
        }
        if (finish) {
            finish(participant);
        }
    });
}

void parallel_for(std::size_t count, std::size_t threads,
                  const std::function<void(std::size_t)>& body) {
    parallel_items(count, threads, [&](std::size_t, std::size_t item) { body(item); });
}

}  // namespace nimbus::kernels
