#include "worker_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace nimbus::kernels {
namespace {

// How long a helper keeps watching for the next region after finishing one before it sleeps:
// waking a sleeping thread takes tens to hundreds of microseconds, as long as a small layer, and
// the layers of a model follow each other microseconds apart.
constexpr std::chrono::microseconds kSpin{200};

class WorkerPool {
public:
    WorkerPool() {
        for (std::size_t index = 0; index < workers_; ++index) {
            std::thread(&WorkerPool::work, this).detach();
        }
    }

    std::size_t size() const { return workers_; }

    // Returns false, without calling `task`, when another region holds the pool.
    bool try_run(std::size_t helpers, const std::function<void()>& task) {
        std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
        if (!region.owns_lock()) {
            return false;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &task;
            unclaimed_ = helpers;
            ++generation_;
        }
        wake_.notify_all();
        task();
        // Helpers that have not woken up yet are not waited for: the work is done.
        std::unique_lock<std::mutex> lock(mutex_);
        unclaimed_ = 0;
        finished_.wait(lock, [&] { return running_ == 0; });
        task_ = nullptr;
        return true;
    }

private:
    void work() {
        std::uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            if (generation_ == seen) {
                lock.unlock();
                const auto until = std::chrono::steady_clock::now() + kSpin;
                while (generation_.load(std::memory_order_relaxed) == seen &&
                       std::chrono::steady_clock::now() < until) {
                    std::this_thread::yield();
                }
                lock.lock();
            }
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            if (unclaimed_ == 0) {
                continue;
            }
            --unclaimed_;
            ++running_;
            const std::function<void()>* task = task_;
            lock.unlock();
            (*task)();
            lock.lock();
            --running_;
            finished_.notify_all();
        }
    }

    const std::size_t workers_ = std::thread::hardware_concurrency() > 1
                                     ? std::thread::hardware_concurrency() - 1
                                     : 0;
    std::mutex region_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable finished_;
    const std::function<void()>* task_ = nullptr;
    // Changed under mutex_; atomic so that a spinning helper may read it without the lock.
    std::atomic<std::uint64_t> generation_{0};
    std::size_t unclaimed_ = 0;
    std::size_t running_ = 0;
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
