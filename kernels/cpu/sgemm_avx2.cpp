// The AVX2 + FMA path of the float32 GEMM: a register tile of up to 6 rows x 16 columns in 12
// ymm accumulators, K-major weight panels of 16 columns, the epilogue (bias, residual,
// relu/relu6) on the registers with masked stores past n, other activations as a vector pass
// over the finished tile (activate_avx2, vector_math_avx2.h), also the AVX2 path's unfused
// activation kernel.
//
// Only functions marked NIMBUS_AVX2 use AVX2 (see qgemm_avx512_vnni.cpp).
#include "sgemm_paths.h"
#include "vector_math_avx2.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <cstdint>


namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 8;
constexpr std::size_t kWidth = kSgemmAvx2Layout.panel_width;
constexpr std::size_t kVectors = kWidth / kLanes;
constexpr std::size_t kRows = kSgemmAvx2Layout.rows;

// All-ones lanes for the first `count` columns of vector `v`, for maskload / maskstore.
NIMBUS_AVX2 inline __m256i lane_mask(std::size_t count, std::size_t v) {
    const std::size_t first = v * kLanes;
    const auto valid = static_cast<std::int32_t>(count <= first ? 0 : count - first);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lanes);
}

template <std::size_t Rows>
NIMBUS_AVX2 void compute_tile(const SgemmBlock& block, const float* a, const float* b,
                              std::size_t row, std::size_t col) {
    const std::size_t columns = block.n - col < kWidth ? block.n - col : kWidth;
    __m256i mask[kVectors];
#pragma GCC unroll 2
    for (std::size_t v = 0; v < kVectors; ++v) {
        mask[v] = lane_mask(columns, v);
    }
    float* out = block.out + row * block.out_stride + col;
    __m256 acc[Rows][kVectors];
#pragma GCC unroll 6
    for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
        for (std::size_t v = 0; v < kVectors; ++v) {
            acc[r][v] = block.first ? _mm256_setzero_ps()
                                    : _mm256_maskload_ps(out + r * block.out_stride + v * kLanes,
                                                         mask[v]);
        }
    }
    const std::size_t stride = block.a_stride;
#pragma GCC unroll 4
    for (std::size_t depth = 0; depth < block.kc; ++depth) {
        __m256 w[kVectors];
#pragma GCC unroll 2
        for (std::size_t v = 0; v < kVectors; ++v) {
            w[v] = _mm256_loadu_ps(b + depth * kWidth + v * kLanes);
        }
#pragma GCC unroll 6
        for (std::size_t r = 0; r < Rows; ++r) {
            const __m256 x = _mm256_broadcast_ss(a + r * stride + depth);
#pragma GCC unroll 2
            for (std::size_t v = 0; v < kVectors; ++v) {
                acc[r][v] = _mm256_fmadd_ps(x, w[v], acc[r][v]);
            }
        }
    }
    const bool relu = block.activation == Activation::relu ||
                      block.activation == Activation::relu6;
    const bool relu6 = block.activation == Activation::relu6;
    const bool in_registers = clamps_in_registers(block.activation);
#pragma GCC unroll 2
    for (std::size_t v = 0; v < kVectors; ++v) {
        const __m256 bias = block.last && block.bias != nullptr
                                ? _mm256_maskload_ps(block.bias + col + v * kLanes, mask[v])
                                : _mm256_setzero_ps();
#pragma GCC unroll 6
        for (std::size_t r = 0; r < Rows; ++r) {
            __m256 value = acc[r][v];
            if (block.last) {
                value = _mm256_add_ps(value, bias);
                if (block.residual != nullptr) {
                    const float* residual =
                        block.residual + (row + r) * block.residual_stride + col + v * kLanes;
                    value = _mm256_add_ps(value, _mm256_maskload_ps(residual, mask[v]));
                }
                if (relu) {
                    value = _mm256_max_ps(_mm256_setzero_ps(), value);
                }
                if (relu6) {
                    value = _mm256_min_ps(_mm256_set1_ps(6.0f), value);
                }
            }
            _mm256_maskstore_ps(out + r * block.out_stride + v * kLanes, mask[v], value);
        }
    }
    if (block.last && !in_registers) {
        for (std::size_t r = 0; r < Rows; ++r) {
            activate_avx2(out + r * block.out_stride, columns, block.activation);
        }
    }
}

using TileKernel = void (*)(const SgemmBlock&, const float*, const float*, std::size_t,
                            std::size_t);

constexpr TileKernel kTileKernels[kRows] = {compute_tile<1>, compute_tile<2>, compute_tile<3>,
                                            compute_tile<4>, compute_tile<5>, compute_tile<6>};

}  // namespace

void run_sgemm_avx2(const SgemmBlock& block) {
    for (std::size_t panel = block.panel_begin; panel < block.panel_end; ++panel) {
        const float* b = block.b + panel * block.k * kWidth + block.k0 * kWidth;
        std::size_t rows = 0;
        for (std::size_t row = 0; row < block.rows; row += rows) {
            // The last two tiles split their rows evenly: a tile of a few rows keeps too few
            // accumulators busy.
            const std::size_t left = block.rows - row;
            rows = left <= kRows ? left : left < 2 * kRows ? (left + 1) / 2 : kRows;
            kTileKernels[rows - 1](block, block.a + row * block.a_stride, b, row,
                                   panel * kWidth);
        }
    }
}

NIMBUS_AVX2 void activate_avx2(float* data, std::size_t count, Activation activation) {
    constexpr std::size_t kLanes = 8;
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        _mm256_storeu_ps(data + i, activate_ps(_mm256_loadu_ps(data + i), activation));
    }
    if (i < count) {  // the tail through a buffer: masked moves are slow on AMD CPUs
        float tail[kLanes] = {};
        std::copy(data + i, data + count, tail);
        _mm256_storeu_ps(tail, activate_ps(_mm256_loadu_ps(tail), activation));
        std::copy(tail, tail + (count - i), data + i);
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
