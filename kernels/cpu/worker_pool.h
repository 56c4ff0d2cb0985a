// Threads that persist between kernel calls: starting a thread costs tens of microseconds,
// as much as a whole small GEMM.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>

namespace nimbus::kernels {

// Calls task(participant) on the calling thread (participant 0) and on up to `helpers` pooled
// threads at once (participants 1 to helpers), and returns when every call has returned. Pooled
// thread j is always participant j, so work shared out by participant index goes to the same
// threads in every call. `task` must share its work out itself and tolerate being called by
// fewer threads, or late, when its work is done.
//
// One parallel region runs at a time in the process: a call that finds the pool busy (another
// session's GEMM) runs `task` on the calling thread alone, so threads never oversubscribe.
void run_on_pool(std::size_t helpers, const std::function<void(std::size_t)>& task);

// Calls body(participant, item) once for every item in [0, count) on the calling thread and up
// to threads - 1 pooled helpers (participants as in run_on_pool, below min(threads, count)).
// Participant p owns the p-th of min(threads, count) runs of adjacent items and takes them in
// order; once through, it takes the items still left in the others' runs. So a thread reads,
// layer after layer, mostly the rows that it wrote itself (reading a 600 KB result that the
// other core wrote took 16 us here, against 5 us for its own), and a thread that the OS wakes
// late delays no fixed share. Each participant then calls finish(participant), when given.
void parallel_items(std::size_t count, std::size_t threads,
                    const std::function<void(std::size_t, std::size_t)>& body,
                    const std::function<void(std::size_t)>& finish = nullptr);

// parallel_items for a body that needs no participant index.
void parallel_for(std::size_t count, std::size_t threads,
                  const std::function<void(std::size_t)>& body);

// Calls kernel(row_begin, row_end) over runs of `rows` output rows, about 8 runs per thread: a
// run of adjacent rows lets a thread reuse the input rows that its previous row read (and a
// kernel prefetch its next row's), and several runs per thread let a thread that finishes early
// take over the other's last ones. Runs take at least `min_run` rows (a direct convolution's kernel
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
