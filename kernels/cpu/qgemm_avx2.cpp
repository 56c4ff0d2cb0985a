// The AVX2 path of the int8 GEMM. vpmaddubsw would saturate its int16 pair sums, so the
// weights are widened to int16 and activations kept as u16, and vpmaddwd forms the exact
// int32 sum of two products (at most 2 * 255 * 128 in magnitude). A block of up to kRowBlock
// rows x 16 columns stays in 12 ymm accumulators over the whole depth.
//
// Only functions marked NIMBUS_AVX2 use AVX2, so the rest of the library, and every inline
// function that this file instantiates, stays at the baseline ISA.
#include "qgemm_paths.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define NIMBUS_AVX2 __attribute__((target("avx2")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 8;
constexpr std::size_t kVectors = kAvx2Layout.panel_width / kLanes;
constexpr std::size_t kGroup = kAvx2Layout.k_group;
constexpr std::size_t kRowBlock = 6;

// The low byte of each int32 lane, gathered into the low 8 bytes.
NIMBUS_AVX2 __m128i low_bytes(__m256i values) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1);
    const __m256i picked = _mm256_shuffle_epi8(values, pick);
    const __m256i joined = _mm256_permutevar8x32_epi32(picked, _mm256_setr_epi32(0, 4, 0, 0, 0,
                                                                                 0, 0, 0));
    return _mm256_castsi256_si128(joined);
}

// The residual terms of `count` (at most 8) consecutive elements from `index`.
NIMBUS_AVX2 __m256 residual_terms(const Residual& residual, std::size_t index, std::size_t count) {
    alignas(16) std::uint8_t bytes[16] = {};
    std::memcpy(bytes, static_cast<const std::uint8_t*>(residual.data) + index, count);
    const __m128i packed = _mm_load_si128(reinterpret_cast<const __m128i*>(bytes));
    const __m256i values =
        residual.is_signed ? _mm256_cvtepi8_epi32(packed) : _mm256_cvtepu8_epi32(packed);
    const __m256i centered = _mm256_sub_epi32(values, _mm256_set1_epi32(residual.zero_point));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(centered), _mm256_set1_ps(residual.scale));
}

// Finishes the 8 accumulators of row `row` that start at column `col` and stores those that
// fall inside the n columns of the result.
NIMBUS_AVX2 void store_vector(const GemmTask& task, std::size_t row, std::size_t col,
                              __m256i raw) {
    if (col >= task.n) {
        return;
    }
    const std::size_t count = task.n - col < kLanes ? task.n - col : kLanes;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const auto* offset = reinterpret_cast<const __m256i*>(task.column_offset + col);
    const __m256i acc = _mm256_add_epi32(raw, _mm256_loadu_si256(offset));
    const std::size_t index = row * task.n + col;
    if (task.type == OutputType::s32) {
        auto* target = reinterpret_cast<int*>(static_cast<std::int32_t*>(task.out) + index);
        _mm256_maskstore_epi32(target, mask, acc);
        return;
    }
    // cvtdq2ps and cvtps2dq round half to even under the default MXCSR, like the reference.
    __m256 scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(task.scale + col));
    if (task.residual.data != nullptr) {
        scaled = _mm256_add_ps(scaled, residual_terms(task.residual, index, count));
    }
    if (task.type == OutputType::f32) {
        _mm256_maskstore_ps(static_cast<float*>(task.out) + index, mask, scaled);
        return;
    }
    // Clamping before rounding equals clamping after it (the bounds are integers), and keeps
    // the value inside int32 for the conversion.
    const __m256 lo = _mm256_set1_ps(static_cast<float>(task.lo - task.zero_point));
    const __m256 hi = _mm256_set1_ps(static_cast<float>(task.hi - task.zero_point));
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(scaled, lo), hi);
    const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(clamped),
                                       _mm256_set1_epi32(task.zero_point));
    std::uint8_t bytes[kLanes];
    _mm_storel_epi64(reinterpret_cast<__m128i*>(bytes), low_bytes(q));
    std::memcpy(static_cast<std::uint8_t*>(task.out) + index, bytes, count);
}

template <std::size_t Rows>
NIMBUS_AVX2 void compute_block(const GemmTask& task, const std::uint16_t* a,
                               const std::int8_t* b, std::size_t row, std::size_t col) {
    __m256i acc[Rows][kVectors];
#pragma GCC unroll 8
    for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
        for (std::size_t v = 0; v < kVectors; ++v) {
            acc[r][v] = _mm256_setzero_si256();
        }
    }
    const std::size_t groups = task.padded_k / kGroup;
    for (std::size_t group = 0; group < groups; ++group) {
        const std::int8_t* weights = b + group * kGroup * kVectors * kLanes;
        __m256i w[kVectors];
#pragma GCC unroll 2
        for (std::size_t v = 0; v < kVectors; ++v) {
            const auto* source = reinterpret_cast<const __m128i*>(weights + v * kGroup * kLanes);
            w[v] = _mm256_cvtepi8_epi16(_mm_loadu_si128(source));
        }
#pragma GCC unroll 8
        for (std::size_t r = 0; r < Rows; ++r) {
            std::int32_t two_activations;
            std::memcpy(&two_activations, a + r * task.padded_k + group * kGroup,
                        sizeof two_activations);
            const __m256i x = _mm256_set1_epi32(two_activations);
#pragma GCC unroll 2
            for (std::size_t v = 0; v < kVectors; ++v) {
                acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(x, w[v]));
            }
        }
    }
#pragma GCC unroll 8
    for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
        for (std::size_t v = 0; v < kVectors; ++v) {
            store_vector(task, row + r, col + v * kLanes, acc[r][v]);
        }
    }
}

using BlockKernel = void (*)(const GemmTask&, const std::uint16_t*, const std::int8_t*,
                             std::size_t, std::size_t);

// compute_block for 1 to kRowBlock rows, indexed by rows - 1.
constexpr BlockKernel kBlockKernels[kRowBlock] = {compute_block<1>, compute_block<2>,
                                                  compute_block<3>, compute_block<4>,
                                                  compute_block<5>, compute_block<6>};

}  // namespace

void run_avx2(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
              std::size_t panel_begin, std::size_t panel_end) {
    const auto* a = static_cast<const std::uint16_t*>(task.a);
    const std::size_t panel_width = kAvx2Layout.panel_width;
    for (std::size_t panel = panel_begin; panel < panel_end; ++panel) {
        const std::int8_t* b = task.b + panel * task.padded_k * panel_width;
        for (std::size_t row = row_begin; row < row_end; row += kRowBlock) {
            const std::size_t rows = row_end - row < kRowBlock ? row_end - row : kRowBlock;
            kBlockKernels[rows - 1](task, a + row * task.padded_k, b, row, panel * panel_width);
        }
    }
}

NIMBUS_AVX2 std::uint64_t peak_avx2(std::size_t iterations, std::uint32_t& sink) {
    constexpr std::size_t kChains = 6;  // with their weights and x: 13 of the 16 ymm registers
    __m256i acc[kChains];
    __m256i w[kChains];
    for (std::size_t c = 0; c < kChains; ++c) {
        acc[c] = _mm256_setzero_si256();
        w[c] = _mm256_set1_epi32(static_cast<int>(0x00030002 + c));
    }
    __m256i x = _mm256_set1_epi32(static_cast<int>(sink | 0x00010001));
    for (std::size_t i = 0; i < iterations; ++i) {
        __asm__("" : "+x"(x));  // x "changes": the products are formed again every iteration
#pragma GCC unroll 6
        for (std::size_t c = 0; c < kChains; ++c) {
            acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(x, w[c]));
        }
    }
    alignas(32) std::uint32_t lanes[kLanes];
    for (const __m256i value : acc) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), value);
        sink += lanes[0];
    }
    return 2ull * kChains * 2 * kLanes * iterations;  // vpmaddwd: 2 products per lane
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
