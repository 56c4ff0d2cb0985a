// mean_axis: each thread takes whole outer slices, or shares of them when there are fewer
// slices than threads; within one, a row of float64 accumulators takes the `length` rows in
// order, a loop over contiguous values that the compiler vectorizes.
#include "reduce.h"

#include <algorithm>
#include <vector>

#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// The fewest inner values of a share: enough for the vectorized loop to pay for its item.
constexpr std::size_t kMinShare = 64;

// out[o, first:end] from the slice of x at o.
void mean_columns(const float* slice, std::size_t length, std::size_t inner, std::size_t first,
                  std::size_t end, std::vector<double>& sums, float* out) {
    std::fill(sums.begin(), sums.begin() + (end - first), 0.0);
    for (std::size_t l = 0; l < length; ++l) {
        const float* row = slice + l * inner + first;
        for (std::size_t i = 0; i < end - first; ++i) {
            sums[i] += static_cast<double>(row[i]);
        }
    }
    for (std::size_t i = 0; i < end - first; ++i) {
        out[first + i] = static_cast<float>(sums[i] / static_cast<double>(length));
    }
}

}  // namespace

void mean_axis(const float* x, std::size_t outer, std::size_t length, std::size_t inner,
               float* out, std::size_t threads) {
    if (outer * inner == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    // Fewer slices than threads (a global average pool at batch 1: 7x7x1280 took 45 us on one
    // thread of two): each slice's inner values in shares. Sums keep their order either way.
    const std::size_t shares =
        outer >= threads ? 1 : std::min(ceil_div(threads, outer), ceil_div(inner, kMinShare));
    if (shares > 1) {
        parallel_for(outer * shares, threads, [&](std::size_t item) {
            const std::size_t o = item / shares;
            const std::size_t share = item % shares;
            const std::size_t first = share * inner / shares;
            const std::size_t end = (share + 1) * inner / shares;
            std::vector<double> sums(end - first);
            mean_columns(x + o * length * inner, length, inner, first, end, sums, out + o * inner);
        });
        return;
    }
    // One slice per item, or slices enough for about 4096 values when they are small rows.
    const std::size_t per_item = std::max<std::size_t>(4096 / (length * inner), 1);
    parallel_for(ceil_div(outer, per_item), threads, [&](std::size_t item) {
        std::vector<double> sums(inner);
        for (std::size_t o = item * per_item; o < std::min(outer, (item + 1) * per_item); ++o) {
            mean_columns(x + o * length * inner, length, inner, 0, inner, sums, out + o * inner);
        }
    });
}

}  // namespace nimbus::kernels
