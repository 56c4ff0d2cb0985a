// Threads that persist between kernel calls: starting a thread costs tens of microseconds,
// as much as a whole small GEMM.
#pragma once

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

}  // namespace nimbus::kernels
