// The AVX2 path of the attention / normalization row primitives, laid out as the AVX-512 one
// (attention_avx512.cpp) at half the width: a GEMM register tile of up to 6 rows x 16 columns
// (12 ymm accumulators), and row passes 8 floats at a time with masked tails.
//
// Only functions marked NIMBUS_AVX2 use AVX2 (see qgemm_avx512_vnni.cpp).
#include "attention_paths.h"
#include "vector_math_avx2.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 8;
constexpr std::size_t kTileRows = 6;
constexpr std::size_t kTileColumns = 2 * kLanes;

// All bits set in the first `count` lanes (all of them from 8 on).
NIMBUS_AVX2 inline __m256i first_lanes(std::size_t count) {
    const auto lanes = static_cast<int>(std::min(count, kLanes));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The next min(left, 8) floats, zeros past them. Masked moves only for the tail: AMD CPUs run
// vmaskmovps many times slower than a plain move, the store especially.
NIMBUS_AVX2 inline __m256 load(const float* x, std::size_t left) {
    return left >= kLanes ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, first_lanes(left));
}

NIMBUS_AVX2 inline void store(float* x, std::size_t left, __m256 value) {
    if (left >= kLanes) {
        _mm256_storeu_ps(x, value);
    } else {
        _mm256_maskstore_ps(x, first_lanes(left), value);
    }
}

template <bool Max>
NIMBUS_AVX2 inline __m128 combine(__m128 a, __m128 b) {
    return Max ? _mm_max_ps(a, b) : _mm_add_ps(a, b);
}

// The max or sum of the 8 lanes, folded pairwise.
template <bool Max>
NIMBUS_AVX2 inline float fold(__m256 x) {
    __m128 half = combine<Max>(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    half = combine<Max>(half, _mm_movehl_ps(half, half));
    half = combine<Max>(half, _mm_shuffle_ps(half, half, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtss_f32(half);
}

// c[Rows, columns] for columns <= kTileColumns; masked lanes load zeros and are not stored.
template <std::size_t Rows>
NIMBUS_AVX2 void gemm_tile(const float* a, std::size_t a_stride, const float* b,
                           std::size_t b_stride, float* c, std::size_t c_stride,
                           std::size_t columns, std::size_t k) {
    const std::size_t high = columns > kLanes ? columns - kLanes : 0;  // columns of vector 1
    // Every loop over the rows is unrolled: otherwise GCC keeps acc in memory, a store per FMA.
    __m256 acc[Rows][2];
#pragma GCC unroll 6
    for (std::size_t r = 0; r < Rows; ++r) {
        acc[r][0] = _mm256_setzero_ps();
        acc[r][1] = _mm256_setzero_ps();
    }
    for (std::size_t p = 0; p < k; ++p) {
        const __m256 b0 = load(b + p * b_stride, columns);
        const __m256 b1 = load(b + p * b_stride + kLanes, high);
#pragma GCC unroll 6
        for (std::size_t r = 0; r < Rows; ++r) {
            const __m256 scalar = _mm256_broadcast_ss(a + r * a_stride + p);
            acc[r][0] = _mm256_fmadd_ps(scalar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(scalar, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (std::size_t r = 0; r < Rows; ++r) {
        store(c + r * c_stride, columns, acc[r][0]);
        store(c + r * c_stride + kLanes, high, acc[r][1]);
    }
}

using TileKernel = void (*)(const float*, std::size_t, const float*, std::size_t, float*,
                            std::size_t, std::size_t, std::size_t);

template <std::size_t... Index>
constexpr std::array<TileKernel, sizeof...(Index)> tile_kernels(std::index_sequence<Index...>) {
    return {gemm_tile<Index + 1>...};
}

// (indexed by rows - 1)
constexpr std::array<TileKernel, kTileRows> kTileKernels =
    tile_kernels(std::make_index_sequence<kTileRows>());

void gemm(const float* a, std::size_t a_stride, const float* b, std::size_t b_stride, float* c,
          std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k) {
    // Columns outermost: a k x 16 strip of b stays in L1 across the row tiles.
    for (std::size_t column = 0; column < n; column += kTileColumns) {
        for (std::size_t row = 0; row < m; row += kTileRows) {
            const std::size_t rows = std::min(kTileRows, m - row);
            kTileKernels[rows - 1](a + row * a_stride, a_stride, b + column, b_stride,
                                   c + row * c_stride + column, c_stride,
                                   std::min(kTileColumns, n - column), k);
        }
    }
}

// The maximum over j = 0, 8, ... < n of value(j, left = n - j) (whose lanes past n are
// ignored), NaN if any is NaN.
template <typename Value>
NIMBUS_AVX2 inline float running_max(std::size_t n, Value value) {
    const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 peak = lowest;
    __m256 nan = _mm256_setzero_ps();  // max_ps drops NaN operands, so NaN is tracked on the side
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __m256 lanes = _mm256_castsi256_ps(first_lanes(n - j));
        const __m256 next = _mm256_blendv_ps(lowest, value(j, n - j), lanes);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(next, next, _CMP_UNORD_Q));
        peak = _mm256_max_ps(peak, next);
    }
    return _mm256_movemask_ps(nan) != 0 ? std::numeric_limits<float>::quiet_NaN()
                                        : fold<true>(peak);
}

NIMBUS_AVX2 float row_max(const float* x, std::size_t n) {
    return running_max(n, [&](std::size_t j, std::size_t left)
                              NIMBUS_AVX2 { return load(x + j, left); });
}

NIMBUS_AVX2 float scale_add_max(float* x, std::size_t n, float factor, const float* add) {
    const __m256 multiplier = _mm256_set1_ps(factor);
    return running_max(n, [&](std::size_t j, std::size_t left) NIMBUS_AVX2 {
        __m256 value = _mm256_mul_ps(load(x + j, left), multiplier);
        if (add != nullptr) {
            value = _mm256_add_ps(value, load(add + j, left));
        }
        store(x + j, left, value);
        return value;
    });
}

NIMBUS_AVX2 float exp_sum(const float* x, float* out, std::size_t n, float shift) {
    const __m256 offset = _mm256_set1_ps(shift);
    const __m256 lowest = _mm256_set1_ps(-87.3f);  // exp_ps's lower clamp
    __m256 total = _mm256_setzero_ps();
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __m256 argument = _mm256_sub_ps(load(x + j, n - j), offset);
        // Zero, not exp_ps's tiny value, past the underflow (and in the lanes past n).
        const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(argument, lowest, _CMP_GE_OQ),
                                          _mm256_castsi256_ps(first_lanes(n - j)));
        const __m256 value = _mm256_and_ps(keep, exp_ps(argument));
        store(out + j, n - j, value);
        total = _mm256_add_ps(total, value);
    }
    return fold<false>(total);
}

NIMBUS_AVX2 void scale(float* x, std::size_t n, float factor) {
    const __m256 multiplier = _mm256_set1_ps(factor);
    for (std::size_t j = 0; j < n; j += kLanes) {
        store(x + j, n - j, _mm256_mul_ps(load(x + j, n - j), multiplier));
    }
}

// The sum over the vectors j = 0, 8, ... < n of add(j, sum), which adds vector j's terms (masked
// past n), in kSums independent chains combined in a fixed order, as on the AVX-512 path.
constexpr std::size_t kSums = 4;

template <typename Add>
NIMBUS_AVX2 inline float chained_sum(std::size_t n, Add add) {
    __m256 sums[kSums];
    for (auto& sum : sums) {
        sum = _mm256_setzero_ps();
    }
    std::size_t j = 0;
    for (; j + kSums * kLanes <= n; j += kSums * kLanes) {
#pragma GCC unroll 4
        for (std::size_t chain = 0; chain < kSums; ++chain) {
            sums[chain] = add(j + chain * kLanes, sums[chain]);
        }
    }
    for (std::size_t chain = 0; j < n; j += kLanes, ++chain) {
        sums[chain] = add(j, sums[chain]);
    }
    return fold<false>(_mm256_add_ps(_mm256_add_ps(sums[0], sums[1]),
                                     _mm256_add_ps(sums[2], sums[3])));
}

NIMBUS_AVX2 void layer_norm_row(const float* x, std::size_t n, const float* weight,
                                const float* bias, float eps, float* out) {
    const float count = static_cast<float>(n);
    const auto add_values = [&](std::size_t j, __m256 sum) NIMBUS_AVX2 {
        return _mm256_add_ps(sum, load(x + j, n - j));
    };
    const __m256 mean = _mm256_set1_ps(chained_sum(n, add_values) / count);
    const auto add_squares = [&](std::size_t j, __m256 sum) NIMBUS_AVX2 {
        // Masked lanes would give (0 - mean)^2: zero them.
        const __m256 centered = _mm256_and_ps(_mm256_sub_ps(load(x + j, n - j), mean),
                                              _mm256_castsi256_ps(first_lanes(n - j)));
        return _mm256_fmadd_ps(centered, centered, sum);
    };
    const float var = chained_sum(n, add_squares) / count;
    const __m256 inverse_std = _mm256_set1_ps(1.0f / std::sqrt(var + eps));
    for (std::size_t j = 0; j < n; j += kLanes) {
        __m256 value = _mm256_mul_ps(_mm256_sub_ps(load(x + j, n - j), mean), inverse_std);
        if (weight != nullptr) {
            value = _mm256_mul_ps(value, load(weight + j, n - j));
        }
        if (bias != nullptr) {
            value = _mm256_add_ps(value, load(bias + j, n - j));
        }
        store(out + j, n - j, value);
    }
}

}  // namespace

const RowKernels kRowKernelsAvx2{gemm,    pack_transposed_elementwise, row_max, scale_add_max,
                                 exp_sum, scale,                       layer_norm_row};

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
