#include "worker_pool.h"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace nimbus::kernels {
namespace {

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
    std::uint64_t generation_ = 0;
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

}  // namespace nimbus::kernels
