// Threads that persist between kernel calls: starting a thread costs tens of microseconds,
// as much as a whole small GEMM.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>

namespace nimbus::kernels {

// Calls `task` on the calling thread and on up to `helpers` pooled threads at once, and returns
// when every call has returned. `task` must share its work out itself (e.g. from an atomic
// counter) and tolerate being called by fewer threads, or late, when its work is done.
//
// One parallel region runs at a time in the process: a call that finds the pool busy (another
// session's GEMM) runs `task` on the calling thread alone, so threads never oversubscribe.
void run_on_pool(std::size_t helpers, const std::function<void()>& task);

// Calls body(item) once for every item in [0, count), the items taken in order from a shared
// counter by the calling thread and up to threads - 1 pooled helpers.
void parallel_for(std::size_t count, std::size_t threads,
                  const std::function<void(std::size_t)>& body);

// Calls kernel(row_begin, row_end) over runs of `rows` output rows, about 8 runs per thread: a
// run of adjacent rows lets a thread reuse the input rows that its previous row read (and a
// kernel prefetch its next row's), and several runs per thread keep parallel_for's dynamic
// balance between the threads. Runs take at least `min_run` rows (a direct convolution's kernel
// height, so that the input rows of its first window are a small part of a run) while there are
// enough rows for every thread.
template <typename Kernel>
void parallel_row_runs(std::size_t rows, std::size_t threads, std::size_t min_run,
                       Kernel kernel) {
    constexpr std::size_t kRunsPerThread = 8;
    min_run = std::min(min_run, (rows + threads - 1) / threads);
    const std::size_t run = std::max(min_run, rows / (threads * kRunsPerThread));
    parallel_for((rows + run - 1) / run, threads, [&](std::size_t item) {
        kernel(item * run, std::min(rows, (item + 1) * run));
    });
}

// Calls kernel(row_begin, row_end) over one run of adjacent rows per thread: for kernels that
// prefetch (or reuse) what the next row of their run reads, where runs of single rows, which
// parallel_row_runs makes of a small image, left every row's loads to miss.
template <typename Kernel>
void parallel_thread_runs(std::size_t rows, std::size_t threads, Kernel kernel) {
    parallel_row_runs(rows, threads, rows, kernel);
}

}  // namespace nimbus::kernels
