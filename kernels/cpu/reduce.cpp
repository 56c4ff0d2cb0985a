// mean_axis: each thread takes whole outer slices; within one, a row of `inner` float64
// accumulators takes the `length` rows in order, a loop over contiguous values that the
// compiler vectorizes.
#include "reduce.h"

#include <algorithm>
#include <vector>

#include "worker_pool.h"

namespace nimbus::kernels {

void mean_axis(const float* x, std::size_t outer, std::size_t length, std::size_t inner,
               float* out, std::size_t threads) {
    if (outer * inner == 0) {
        return;
    }
    // One slice per item, or slices enough for about 4096 values when they are small rows.
    const std::size_t per_item = std::max<std::size_t>(4096 / (length * inner), 1);
    const std::size_t items = (outer + per_item - 1) / per_item;
    parallel_for(items, threads, [&](std::size_t item) {
        std::vector<double> sums(inner);
        for (std::size_t o = item * per_item; o < std::min(outer, (item + 1) * per_item); ++o) {
            std::fill(sums.begin(), sums.end(), 0.0);
            const float* slice = x + o * length * inner;
            for (std::size_t l = 0; l < length; ++l) {
                for (std::size_t i = 0; i < inner; ++i) {
                    sums[i] += static_cast<double>(slice[l * inner + i]);
                }
            }
            for (std::size_t i = 0; i < inner; ++i) {
                out[o * inner + i] = static_cast<float>(sums[i] / static_cast<double>(length));
            }
        }
    });
}

}  // namespace nimbus::kernels
