// mean_axis: each thread takes whole outer slices, or shares of them when there are fewer
// slices than threads; within one, blocks of float64 sums in registers take the `length` rows
// in order, loops that the compiler vectorizes, compiled once more for AVX2 and for AVX-512
// (their conversions to double take 4 and 8 values at a time, the baseline's 2). The pool of
// EfficientNet-B0's 32 x 112 x 112 took 70 us, now 35 (two threads, AVX-512).
#include "reduce.h"

#include <algorithm>

#include "isa.h"
#include "sgemm.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// The fewest inner values of a share: two AVX-512 vectors of float64 sums, so the shares of a
// pool over few channels (32 at 112 x 112 in EfficientNet-B0) still go to every thread.
constexpr std::size_t kMinShare = 16;

// sums[0:width] += the columns of `length` rows `inner` apart. Fixed widths let the compiler keep
// the sums in registers across the rows; in memory, each row's adds waited on the previous row's
// stores (AVX-512 over 12544 rows of 32: 119 us, slower than the baseline's 71).
template <std::size_t kWidth>
__attribute__((always_inline)) inline void sum_block(const float* column, std::size_t length,
                                                     std::size_t inner, double* sums) {
    double block[kWidth] = {};
    for (std::size_t l = 0; l < length; ++l) {
        const float* row = column + l * inner;
#pragma GCC unroll 32
        for (std::size_t i = 0; i < kWidth; ++i) {
            block[i] += static_cast<double>(row[i]);
        }
    }
    std::copy(block, block + kWidth, sums);
}

// out[first:end] from the slice of x at o: blocks of 32 columns, then of 8, then single ones.
__attribute__((always_inline)) inline void mean_columns(const float* slice, std::size_t length,
                                                        std::size_t inner, std::size_t first,
                                                        std::size_t end, float* out) {
    std::size_t c = first;
    double sums[32];
    while (c < end) {
        const std::size_t width = end - c >= 32 ? 32 : end - c >= 8 ? 8 : 1;
        if (width == 32) {
            sum_block<32>(slice + c, length, inner, sums);
        } else if (width == 8) {
            sum_block<8>(slice + c, length, inner, sums);
        } else {
            sum_block<1>(slice + c, length, inner, sums);
        }
        for (std::size_t i = 0; i < width; ++i) {
            out[c + i] = static_cast<float>(sums[i] / static_cast<double>(length));
        }
        c += width;
    }
}

using MeanColumns = void (*)(const float*, std::size_t, std::size_t, std::size_t, std::size_t,
                             float*);

void mean_columns_portable(const float* slice, std::size_t length, std::size_t inner,
                           std::size_t first, std::size_t end, float* out) {
    mean_columns(slice, length, inner, first, end, out);
}

#ifdef NIMBUS_X86_KERNELS
__attribute__((target("avx2"))) void mean_columns_avx2(const float* slice, std::size_t length,
                                                       std::size_t inner, std::size_t first,
                                                       std::size_t end, float* out) {
    mean_columns(slice, length, inner, first, end, out);
}

__attribute__((target("avx512f"))) void mean_columns_avx512(const float* slice,
                                                            std::size_t length,
                                                            std::size_t inner, std::size_t first,
                                                            std::size_t end, float* out) {
    mean_columns(slice, length, inner, first, end, out);
}
#endif

MeanColumns mean_columns_for(Isa isa) {
#ifdef NIMBUS_X86_KERNELS
    switch (sgemm_path(isa)) {
        case Isa::avx512_vnni:
            return &mean_columns_avx512;
        case Isa::avx2:
            return &mean_columns_avx2;
        default:
            break;
    }
#endif
    return &mean_columns_portable;
}

}  // namespace

void mean_axis(const float* x, std::size_t outer, std::size_t length, std::size_t inner,
               float* out, std::size_t threads, Isa isa) {
    if (outer * inner == 0) {
        return;
    }
    const MeanColumns columns = mean_columns_for(isa);
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
            columns(x + o * length * inner, length, inner, first, end, out + o * inner);
        });
        return;
    }
    // One slice per item, or slices enough for about 4096 values when they are small rows.
    const std::size_t per_item = std::max<std::size_t>(4096 / (length * inner), 1);
    parallel_for(ceil_div(outer, per_item), threads, [&](std::size_t item) {
        for (std::size_t o = item * per_item; o < std::min(outer, (item + 1) * per_item); ++o) {
            columns(x + o * length * inner, length, inner, 0, inner, out + o * inner);
        }
    });
}

}  // namespace nimbus::kernels
