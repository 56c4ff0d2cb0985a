// The AVX-512 path of the attention / normalization row primitives: a GEMM register tile of up
// to 8 rows x 32 columns (16 zmm accumulators, one broadcast of a per row and two vectors of b
// per depth step), and row passes 16 floats at a time with masked tails.
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "attention_paths.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;
constexpr std::size_t kTileRows = 8;
constexpr std::size_t kTileColumns = 2 * kLanes;

template <bool Max>
NIMBUS_AVX512F inline __m512 combine(__m512 a, __m512 b) {
    return Max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b);
}

// The max or sum of the 16 lanes, folded pairwise. The shuffles are the masked forms with every
// lane set: GCC 12 reports the _mm512_undefined_ps of the unmasked ones (and of
// _mm512_reduce_*) as uninitialized (GCC bug 105593).
template <bool Max>
NIMBUS_AVX512F inline float fold(__m512 x) {
    const __mmask16 all = 0xffff;
    x = combine<Max>(x, _mm512_mask_shuffle_f32x4(x, all, x, x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = combine<Max>(x, _mm512_mask_shuffle_f32x4(x, all, x, x, _MM_SHUFFLE(2, 3, 0, 1)));
    x = combine<Max>(x, _mm512_mask_permute_ps(x, all, x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = combine<Max>(x, _mm512_mask_permute_ps(x, all, x, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_cvtss_f32(x);
}

NIMBUS_AVX512F inline __m512 load(const float* x, std::size_t left) {
    return _mm512_maskz_loadu_ps(first_lanes(left), x);
}

// c[Rows, columns] for columns <= kTileColumns; masked lanes load zeros and are not stored.
// Full tiles (columns == kTileColumns) load b without masks, which cost more in this loop
// (BERT-base attention at batch 8 on one thread: 6.4 -> 6.2 ms).
template <std::size_t Rows, bool Full>
NIMBUS_AVX512F void gemm_tile(const float* a, std::size_t a_stride, const float* b,
                              std::size_t b_stride, float* c, std::size_t c_stride,
                              std::size_t columns, std::size_t k) {
    const __mmask16 low = first_lanes(columns);
    const __mmask16 high = columns > kLanes ? first_lanes(columns - kLanes) : __mmask16(0);
    // Every loop over the rows is unrolled: otherwise GCC keeps acc in memory, a store per FMA.
    __m512 acc[Rows][2];
#pragma GCC unroll 8
    for (std::size_t r = 0; r < Rows; ++r) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (std::size_t p = 0; p < k; ++p) {
        const __m512 b0 = Full ? _mm512_loadu_ps(b + p * b_stride)
                               : _mm512_maskz_loadu_ps(low, b + p * b_stride);
        const __m512 b1 = Full ? _mm512_loadu_ps(b + p * b_stride + kLanes)
                               : _mm512_maskz_loadu_ps(high, b + p * b_stride + kLanes);
#pragma GCC unroll 8
        for (std::size_t r = 0; r < Rows; ++r) {
            const __m512 scalar = _mm512_set1_ps(a[r * a_stride + p]);
            acc[r][0] = _mm512_fmadd_ps(scalar, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(scalar, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (std::size_t r = 0; r < Rows; ++r) {
        _mm512_mask_storeu_ps(c + r * c_stride, low, acc[r][0]);
        _mm512_mask_storeu_ps(c + r * c_stride + kLanes, high, acc[r][1]);
    }
}

using TileKernel = void (*)(const float*, std::size_t, const float*, std::size_t, float*,
                            std::size_t, std::size_t, std::size_t);

template <bool Full, std::size_t... Index>
constexpr std::array<TileKernel, sizeof...(Index)> tile_kernels(std::index_sequence<Index...>) {
    return {gemm_tile<Index + 1, Full>...};
}

// (indexed by full tile, then rows - 1)
constexpr std::array<TileKernel, kTileRows> kTileKernels[2] = {
    tile_kernels<false>(std::make_index_sequence<kTileRows>()),
    tile_kernels<true>(std::make_index_sequence<kTileRows>())};

void gemm(const float* a, std::size_t a_stride, const float* b, std::size_t b_stride, float* c,
          std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k) {
    // Columns outermost: a k x 32 strip of b stays in L1 across the row tiles.
    for (std::size_t column = 0; column < n; column += kTileColumns) {
        for (std::size_t row = 0; row < m; row += kTileRows) {
            const std::size_t rows = std::min(kTileRows, m - row);
            const std::size_t columns = std::min(kTileColumns, n - column);
            kTileKernels[columns == kTileColumns][rows - 1](a + row * a_stride, a_stride,
                                                            b + column, b_stride,
                                                            c + row * c_stride + column,
                                                            c_stride, columns, k);
        }
    }
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for a 16 x 16 block of 32-bit words:
// pairs of rows interleaved, then quadruples, then 128-bit lanes twice.
NIMBUS_AVX512F void transpose_block(const std::uint32_t* src, std::size_t src_stride,
                                    std::uint32_t* dst, std::size_t dst_stride) {
    // Words move through float shuffles: casts between vector types are free, bits unchanged.
    __m512 rows[kLanes];
    __m512 pairs[kLanes];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < kLanes; ++r) {
        rows[r] = _mm512_castsi512_ps(_mm512_loadu_si512(src + r * src_stride));
    }
    // pairs[2i] per 128-bit lane: (row 2i, row 2i + 1) of columns 0, 1 of the lane; [2i + 1]: 2, 3.
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kLanes; r += 2) {
        pairs[r] = _mm512_unpacklo_ps(rows[r], rows[r + 1]);
        pairs[r + 1] = _mm512_unpackhi_ps(rows[r], rows[r + 1]);
    }
    // rows[4g + c] per 128-bit lane l: column 4l + c of rows 4g to 4g + 3.
#pragma GCC unroll 4
    for (std::size_t g = 0; g < kLanes; g += 4) {
        rows[g] = _mm512_shuffle_ps(pairs[g], pairs[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
        rows[g + 1] = _mm512_shuffle_ps(pairs[g], pairs[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
        rows[g + 2] = _mm512_shuffle_ps(pairs[g + 1], pairs[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
        rows[g + 3] = _mm512_shuffle_ps(pairs[g + 1], pairs[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    // pairs[8h + c] (c < 4): columns c and 8 + c of rows 8h to 8h + 7, in 128-bit lanes of 4
    // rows; pairs[8h + 4 + c]: columns 4 + c and 12 + c.
#pragma GCC unroll 2
    for (std::size_t h = 0; h < kLanes; h += 8) {
#pragma GCC unroll 4
        for (std::size_t c = 0; c < 4; ++c) {
            pairs[h + c] = _mm512_shuffle_f32x4(rows[h + c], rows[h + 4 + c], 0x88);
            pairs[h + 4 + c] = _mm512_shuffle_f32x4(rows[h + c], rows[h + 4 + c], 0xdd);
        }
    }
#pragma GCC unroll 8
    for (std::size_t c = 0; c < 8; ++c) {
        const __m512 low = _mm512_shuffle_f32x4(pairs[c], pairs[8 + c], 0x88);
        const __m512 high = _mm512_shuffle_f32x4(pairs[c], pairs[8 + c], 0xdd);
        _mm512_storeu_si512(dst + c * dst_stride, _mm512_castps_si512(low));
        _mm512_storeu_si512(dst + (c + 8) * dst_stride, _mm512_castps_si512(high));
    }
}

}  // namespace

// Blocks of 16 x 16 transposed in registers: one element at a time, BERT-base's k (128 x 64)
// took a tenth of its attention's time on one thread.
void pack_transposed_words_avx512(const void* k_words, std::size_t row_stride, std::size_t s,
                                  std::size_t d, void* strip_words) {
    // Words move only through vector loads, shuffles and stores, which may alias anything.
    const auto* k = static_cast<const std::uint32_t*>(k_words);
    auto* strips = static_cast<std::uint32_t*>(strip_words);
    const std::size_t block_rows = s / kLanes * kLanes;
    const std::size_t block_columns = d / kLanes * kLanes;
    for (std::size_t j = 0; j < block_rows; j += kLanes) {
        std::uint32_t* strip =
            strips + j / kAttentionStrip * d * kAttentionStrip + j % kAttentionStrip;
        for (std::size_t c = 0; c < block_columns; c += kLanes) {
            transpose_block(k + j * row_stride + c, row_stride, strip + c * kAttentionStrip,
                            kAttentionStrip);
        }
    }
    pack_transposed_elements(k, row_stride, d, 0, block_rows, block_columns, strips);
    pack_transposed_elements(k, row_stride, d, block_rows, s, 0, strips);
}

namespace {

void pack_transposed(const float* k, std::size_t row_stride, std::size_t s, std::size_t d,
                     float* strips) {
    pack_transposed_words_avx512(k, row_stride, s, d, strips);
}

// The maximum over j = 0, 16, ... < n of value(j, left = n - j) (whose lanes past n are
// ignored), NaN if any is NaN.
template <typename Value>
NIMBUS_AVX512F inline float running_max(std::size_t n, Value value) {
    const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 peak = lowest;
    __mmask16 nan = 0;  // max_ps drops NaN operands, so NaN is tracked on the side
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __mmask16 lanes = first_lanes(n - j);
        const __m512 next = _mm512_mask_mov_ps(lowest, lanes, value(j, n - j));
        nan |= _mm512_cmp_ps_mask(next, next, _CMP_UNORD_Q);
        peak = _mm512_max_ps(peak, next);
    }
    return nan != 0 ? std::numeric_limits<float>::quiet_NaN() : fold<true>(peak);
}

NIMBUS_AVX512F float row_max(const float* x, std::size_t n) {
    return running_max(n, [&](std::size_t j, std::size_t left)
                              NIMBUS_AVX512F { return load(x + j, left); });
}

NIMBUS_AVX512F float scale_add_max(float* x, std::size_t n, float factor, const float* add) {
    const __m512 multiplier = _mm512_set1_ps(factor);
    return running_max(n, [&](std::size_t j, std::size_t left) NIMBUS_AVX512F {
        __m512 value = _mm512_mul_ps(load(x + j, left), multiplier);
        if (add != nullptr) {
            value = _mm512_add_ps(value, load(add + j, left));
        }
        _mm512_mask_storeu_ps(x + j, first_lanes(left), value);
        return value;
    });
}

NIMBUS_AVX512F float exp_sum(const float* x, float* out, std::size_t n, float shift) {
    const __m512 offset = _mm512_set1_ps(shift);
    const __m512 lowest = _mm512_set1_ps(-87.3f);  // exp_ps's lower clamp
    __m512 total = _mm512_setzero_ps();
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __mmask16 lanes = first_lanes(n - j);
        const __m512 argument = _mm512_sub_ps(load(x + j, n - j), offset);
        // Zero, not exp_ps's tiny value, past the underflow: masked scores weigh exactly 0.
        const __mmask16 finite = _mm512_cmp_ps_mask(argument, lowest, _CMP_GE_OQ) & lanes;
        const __m512 value = _mm512_maskz_mov_ps(finite, exp_ps(argument));
        _mm512_mask_storeu_ps(out + j, lanes, value);
        total = _mm512_add_ps(total, value);
    }
    return fold<false>(total);
}

NIMBUS_AVX512F void scale(float* x, std::size_t n, float factor) {
    const __m512 multiplier = _mm512_set1_ps(factor);
    for (std::size_t j = 0; j < n; j += kLanes) {
        _mm512_mask_storeu_ps(x + j, first_lanes(n - j),
                              _mm512_mul_ps(load(x + j, n - j), multiplier));
    }
}

// The sum over the vectors j = 0, 16, ... < n of add(j, lanes, sum) (which adds vector j's
// terms, `lanes` masking those past n), in kSums independent chains combined in a fixed order:
// one chain waits for each add's latency (a BERT-base row: 48 dependent adds per pass; layer
// norm over 1024 x 768 on one thread: 0.150 -> 0.122 ms).
constexpr std::size_t kSums = 4;

template <typename Add>
NIMBUS_AVX512F inline float chained_sum(std::size_t n, Add add) {
    __m512 sums[kSums];
    for (auto& sum : sums) {
        sum = _mm512_setzero_ps();
    }
    std::size_t j = 0;
    for (; j + kSums * kLanes <= n; j += kSums * kLanes) {
#pragma GCC unroll 4
        for (std::size_t chain = 0; chain < kSums; ++chain) {
            sums[chain] = add(j + chain * kLanes, __mmask16(0xffff), sums[chain]);
        }
    }
    for (std::size_t chain = 0; j < n; j += kLanes, ++chain) {
        sums[chain] = add(j, first_lanes(n - j), sums[chain]);
    }
    return fold<false>(_mm512_add_ps(_mm512_add_ps(sums[0], sums[1]),
                                     _mm512_add_ps(sums[2], sums[3])));
}

NIMBUS_AVX512F void layer_norm_row(const float* x, std::size_t n, const float* weight,
                                   const float* bias, float eps, float* out) {
    const float count = static_cast<float>(n);
    const auto add_values = [&](std::size_t j, __mmask16 lanes, __m512 sum) NIMBUS_AVX512F {
        return _mm512_add_ps(sum, _mm512_maskz_loadu_ps(lanes, x + j));
    };
    const float total = chained_sum(n, add_values);
    const __m512 mean = _mm512_set1_ps(total / count);
    const auto add_squares = [&](std::size_t j, __mmask16 lanes, __m512 sum) NIMBUS_AVX512F {
        // Masked lanes would give (0 - mean)^2: zero them.
        const __m512 centered =
            _mm512_maskz_sub_ps(lanes, _mm512_maskz_loadu_ps(lanes, x + j), mean);
        return _mm512_fmadd_ps(centered, centered, sum);
    };
    const float squares = chained_sum(n, add_squares);
    const float var = squares / count;
    const __m512 inverse_std = _mm512_set1_ps(1.0f / std::sqrt(var + eps));
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __mmask16 lanes = first_lanes(n - j);
        __m512 value = _mm512_mul_ps(_mm512_sub_ps(load(x + j, n - j), mean), inverse_std);
        if (weight != nullptr) {
            value = _mm512_mul_ps(value, load(weight + j, n - j));
        }
        if (bias != nullptr) {
            value = _mm512_add_ps(value, load(bias + j, n - j));
        }
        _mm512_mask_storeu_ps(out + j, lanes, value);
    }
}

}  // namespace

const RowKernels kRowKernelsAvx512{gemm,    pack_transposed, row_max,       scale_add_max,
                                   exp_sum, scale,           layer_norm_row};

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
