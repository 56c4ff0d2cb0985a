// The AVX-512 path of the float32 GEMM: a register tile of up to 12 rows x 32 columns in 24
// zmm accumulators; each depth step loads two vectors of the K-major weight panel and
// broadcasts one activation per row into an FMA. The epilogue (bias, residual, relu/relu6)
// runs on the registers with masked stores for the columns past n; other activations run as a
// vectorized pass over the finished tile (activate_avx512).
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "sgemm_paths.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

#include <array>
#include <utility>

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;
constexpr std::size_t kWidth = kSgemmAvx512Layout.panel_width;
constexpr std::size_t kVectors = kWidth / kLanes;
constexpr std::size_t kRows = kSgemmAvx512Layout.rows;

// The lanes of vector `v` that hold some of the first `count` columns of the tile.
inline __mmask16 lane_mask(std::size_t count, std::size_t v) {
    const std::size_t first = v * kLanes;
    if (count <= first) {
        return 0;
    }
    return count - first >= kLanes ? __mmask16(0xffff)
                                   : static_cast<__mmask16>((1u << (count - first)) - 1);
}

NIMBUS_AVX512F void activate_range(float* data, std::size_t count, Activation activation) {
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        _mm512_storeu_ps(data + i, activate_ps(_mm512_loadu_ps(data + i), activation));
    }
    if (i < count) {
        const auto mask = static_cast<__mmask16>((1u << (count - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(mask, data + i);
        _mm512_mask_storeu_ps(data + i, mask, activate_ps(x, activation));
    }
}

// ---- the register tile -----------------------------------------------------------------------

// Adds the products of one depth (a[r * stride] times the weights w of the panel) to acc.
template <std::size_t Rows, std::size_t Vectors>
NIMBUS_AVX512F inline void accumulate_depth(__m512 (&acc)[Rows][Vectors], const float* a,
                                            std::size_t stride, const float* w) {
    __m512 weights[Vectors];
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        weights[v] = _mm512_loadu_ps(w + v * kLanes);
    }
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
        const __m512 x = _mm512_set1_ps(a[r * stride]);
#pragma GCC unroll 2
        for (std::size_t v = 0; v < Vectors; ++v) {
            acc[r][v] = _mm512_fmadd_ps(x, weights[v], acc[r][v]);
        }
    }
}

template <std::size_t Rows, std::size_t Vectors>
NIMBUS_AVX512F void compute_tile(const SgemmBlock& block, const float* a, const float* b,
                                 std::size_t row, std::size_t col) {
    const std::size_t columns = block.n - col < kWidth ? block.n - col : kWidth;
    __mmask16 mask[Vectors];
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        mask[v] = lane_mask(columns, v);
    }
    float* out = block.out + row * block.out_stride + col;
    // Few rows leave too few independent accumulators to hide the latency of the FMA, so they
    // alternate depths between several chains, summed at the end in a fixed order.
    constexpr std::size_t kChains = Rows == 1 ? 4 : Rows <= 3 ? 2 : 1;
    __m512 chains[kChains][Rows][Vectors];
#pragma GCC unroll 4
    for (std::size_t chain = 0; chain < kChains; ++chain) {
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
            for (std::size_t v = 0; v < Vectors; ++v) {
                const float* stored = out + r * block.out_stride + v * kLanes;
                chains[chain][r][v] = block.first || chain > 0
                                          ? _mm512_setzero_ps()
                                          : _mm512_maskz_loadu_ps(mask[v], stored);
            }
        }
    }
    const std::size_t stride = block.a_stride;
    std::size_t depth = 0;
#pragma GCC unroll 4
    for (; depth + kChains <= block.kc; depth += kChains) {
#pragma GCC unroll 4
        for (std::size_t chain = 0; chain < kChains; ++chain) {
            accumulate_depth<Rows, Vectors>(chains[chain], a + depth + chain, stride,
                                   b + (depth + chain) * kWidth);
        }
    }
    for (; depth < block.kc; ++depth) {
        accumulate_depth<Rows, Vectors>(chains[0], a + depth, stride, b + depth * kWidth);
    }
    __m512 acc[Rows][Vectors];
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
        for (std::size_t v = 0; v < Vectors; ++v) {
            acc[r][v] = chains[0][r][v];
#pragma GCC unroll 4
            for (std::size_t chain = 1; chain < kChains; ++chain) {
                acc[r][v] = _mm512_add_ps(acc[r][v], chains[chain][r][v]);
            }
        }
    }
    if (!block.last) {
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 2
            for (std::size_t v = 0; v < Vectors; ++v) {
                _mm512_mask_storeu_ps(out + r * block.out_stride + v * kLanes, mask[v], acc[r][v]);
            }
        }
        return;
    }
    const bool in_registers = clamps_in_registers(block.activation);
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        const __m512 bias = block.bias != nullptr
                                ? _mm512_maskz_loadu_ps(mask[v], block.bias + col + v * kLanes)
                                : _mm512_setzero_ps();
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            __m512 value = _mm512_add_ps(acc[r][v], bias);
            if (block.residual != nullptr) {
                const float* residual =
                    block.residual + (row + r) * block.residual_stride + col + v * kLanes;
                value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask[v], residual));
            }
            if (in_registers) {
                value = activate_ps(value, block.activation);
            }
            _mm512_mask_storeu_ps(out + r * block.out_stride + v * kLanes, mask[v], value);
        }
    }
    if (!in_registers) {
        for (std::size_t r = 0; r < Rows; ++r) {
            activate_range(out + r * block.out_stride, columns, block.activation);
        }
    }
}

using TileKernel = void (*)(const SgemmBlock&, const float*, const float*, std::size_t,
                            std::size_t);

// The tile kernels of `Vectors` vectors of columns for 1 to sizeof...(Rows) rows.
template <std::size_t Vectors, std::size_t... Rows>
constexpr std::array<TileKernel, sizeof...(Rows)> tile_kernels(std::index_sequence<Rows...>) {
    return {compute_tile<Rows + 1, Vectors>...};
}

// compute_tile for 1 to kRows rows (indexed by rows - 1) and one or two vectors of columns
// (indexed by vectors - 1): a panel's last 16 columns or fewer skip the second vector.
constexpr std::array<TileKernel, kRows> kTileKernels[kVectors] = {
    tile_kernels<1>(std::make_index_sequence<kRows>()),
    tile_kernels<2>(std::make_index_sequence<kRows>())};

}  // namespace

void activate_avx512(float* data, std::size_t count, Activation activation) {
    activate_range(data, count, activation);
}

void run_sgemm_avx512(const SgemmBlock& block) {
    for (std::size_t panel = block.panel_begin; panel < block.panel_end; ++panel) {
        const float* b = block.b + panel * block.k * kWidth + block.k0 * kWidth;
        std::size_t rows = 0;
        for (std::size_t row = 0; row < block.rows; row += rows) {
            // The last two tiles split their rows evenly: a tile of a few rows keeps too few
            // accumulators busy.
            const std::size_t left = block.rows - row;
            rows = left <= kRows ? left : left < 2 * kRows ? (left + 1) / 2 : kRows;
            const std::size_t columns = block.n - panel * kWidth;
            const std::size_t vectors = columns <= kLanes ? 1 : kVectors;
            kTileKernels[vectors - 1][rows - 1](block, block.a + row * block.a_stride, b, row,
                                                panel * kWidth);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
