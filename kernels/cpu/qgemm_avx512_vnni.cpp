// The AVX512-VNNI path of the int8 GEMM: vpdpbusd multiplies 4 u8 activations by 4 s8 weights
// and adds the sum to an int32 lane, exactly. A block of up to 6 rows x 64 columns stays in 24
// zmm accumulators over the whole depth, then the epilogue runs on the registers. A panel's
// last columns skip the vectors of zero weights past n and take more rows instead (12 rows of
// 16 or 32 columns, 8 of 48): a projection layer of 16 or 24 outputs does 4 or 2 times less
// work than over the whole padded panel.
//
// Only functions marked NIMBUS_AVX512_VNNI use AVX-512, so the rest of the library, and every
// inline function that this file instantiates, stays at the baseline ISA.
#include "qgemm_paths.h"

#ifdef NIMBUS_X86_KERNELS

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "qgemm_store_avx512.h"

namespace nimbus::kernels {
namespace {

using avx512::kLanes;
using avx512::store_column;

constexpr std::size_t kVectors = kAvx512VnniLayout.panel_width / kLanes;
constexpr std::size_t kGroup = kAvx512VnniLayout.k_group;
// Rows of a block that computes `vectors` vectors of columns: up to 24 accumulators.
constexpr std::size_t row_block(std::size_t vectors) { return vectors == 1 ? 12 : 24 / vectors; }

// Adds the products of depth group `group` of the panel's weights, read at offset `offset` of
// each row, with the first Vectors vectors of the panel's columns to one chain of accumulators.
template <std::size_t Rows, std::size_t Vectors>
NIMBUS_AVX512_VNNI inline void accumulate_group(__m512i (&acc)[Rows][Vectors],
                                                const std::uint8_t* const (&rows)[Rows],
                                                std::size_t offset, const std::int8_t* b,
                                                std::size_t group) {
    const std::int8_t* weights = b + group * kGroup * kVectors * kLanes;
    __m512i w[Vectors];
#pragma GCC unroll 4
    for (std::size_t v = 0; v < Vectors; ++v) {
        w[v] = _mm512_loadu_si512(weights + v * kGroup * kLanes);
    }
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
        std::int32_t four_activations;
        std::memcpy(&four_activations, rows[r] + offset, kGroup);
        const __m512i x = _mm512_set1_epi32(four_activations);
#pragma GCC unroll 4
        for (std::size_t v = 0; v < Vectors; ++v) {
            acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], x, w[v]);
        }
    }
}

// Where the rows of a block start and how they go on: a matrix row is one run of padded_k
// bytes; an implicit GEMM's row a few runs (kernel rows of a window) a stride apart.
struct BlockRows {
    const std::uint8_t* const* starts;
    const std::size_t* strides;  // unread for one run
    std::size_t runs;
    std::size_t run_groups;  // depth groups per run
};

// A single row (M = 1) reads each weight once: it streams the panel from L2 or L3 at the
// caches' pace. Asking for the lines 4 KiB ahead (`Vectors` lines from `weights` on), into L1,
// keeps more of them in flight than the hardware prefetchers do: 1 x 4096 x 4096 on two
// threads, 90-92 -> 74-76 us (weights in L3); hints into L2 only were slower than none.
template <std::size_t Vectors>
inline void prefetch_weights(const std::int8_t* weights) {
    constexpr std::size_t kAheadBytes = 4096;
    constexpr std::size_t kLineBytes = 64;
#pragma GCC unroll 8
    for (std::size_t line = 0; line < Vectors * kGroup * kLanes / kLineBytes; ++line) {
        _mm_prefetch(reinterpret_cast<const char*>(weights) + kAheadBytes + line * kLineBytes,
                     _MM_HINT_T0);
    }
}

// Few rows leave too few independent accumulators to hide the latency of vpdpbusd, so they
// alternate depth groups between two chains of accumulators.
template <std::size_t Rows, std::size_t Vectors>
NIMBUS_AVX512_VNNI void compute_block(const GemmTask& task, const BlockRows& source,
                                      const std::int8_t* b, std::size_t row, std::size_t col) {
    constexpr std::size_t kChains = Rows <= 2 ? 2 : 1;
    __m512i acc[kChains][Rows][Vectors];
#pragma GCC unroll 2
    for (std::size_t chain = 0; chain < kChains; ++chain) {
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
#pragma GCC unroll 4
            for (std::size_t v = 0; v < Vectors; ++v) {
                acc[chain][r][v] = _mm512_setzero_si512();
            }
        }
    }
    const std::uint8_t* rows[Rows];
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
        rows[r] = source.starts[r];
    }
    const std::size_t groups = source.run_groups;
    const std::int8_t* run_weights = b;
    for (std::size_t run = 0; run < source.runs; ++run) {
        std::size_t group = 0;
        for (; group + kChains <= groups; group += kChains) {
            if (Rows == 1) {
                prefetch_weights<kChains * Vectors>(run_weights +
                                                    group * kGroup * kVectors * kLanes);
            }
#pragma GCC unroll 2
            for (std::size_t chain = 0; chain < kChains; ++chain) {
                accumulate_group<Rows, Vectors>(acc[chain], rows, (group + chain) * kGroup,
                                                run_weights, group + chain);
            }
        }
        for (; group < groups; ++group) {
            accumulate_group<Rows, Vectors>(acc[0], rows, group * kGroup, run_weights, group);
        }
        run_weights += groups * kGroup * kVectors * kLanes;
        if (run + 1 < source.runs) {
#pragma GCC unroll 12
            for (std::size_t r = 0; r < Rows; ++r) {
                rows[r] += source.strides[r];
            }
        }
    }
#pragma GCC unroll 4
    for (std::size_t v = 0; v < Vectors; ++v) {
        __m512i sums[Rows];
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            sums[r] = acc[0][r][v];
#pragma GCC unroll 2
            for (std::size_t chain = 1; chain < kChains; ++chain) {
                sums[r] = _mm512_add_epi32(sums[r], acc[chain][r][v]);
            }
        }
        store_column<Rows>(task, row, col + v * kLanes, sums);
    }
}

using BlockKernel = void (*)(const GemmTask&, const BlockRows&, const std::int8_t*, std::size_t,
                             std::size_t);

// compute_block of Vectors vectors for 1 to sizeof...(Rows) rows, indexed by rows - 1.
template <std::size_t Vectors, std::size_t... Rows>
constexpr std::array<BlockKernel, row_block(1)> block_kernels(std::index_sequence<Rows...>) {
    return {compute_block<Rows + 1, Vectors>...};
}

// Indexed by vectors - 1, then rows - 1.
constexpr std::array<BlockKernel, row_block(1)> kBlockKernels[kVectors] = {
    block_kernels<1>(std::make_index_sequence<row_block(1)>()),
    block_kernels<2>(std::make_index_sequence<row_block(2)>()),
    block_kernels<3>(std::make_index_sequence<row_block(3)>()),
    block_kernels<4>(std::make_index_sequence<row_block(4)>())};

}  // namespace

void run_avx512_vnni(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                     std::size_t panel_begin, std::size_t panel_end) {
    const auto* a = static_cast<const std::uint8_t*>(task.a);
    const std::size_t panel_width = kAvx512VnniLayout.panel_width;
    const std::uint8_t* starts[row_block(1)];
    BlockRows block_rows{starts, nullptr, 1, task.padded_k / kGroup};
    if (task.runs != nullptr) {
        block_rows.runs = task.runs->runs;
        block_rows.run_groups = task.runs->run_bytes / kGroup;
    }
    for (std::size_t panel = panel_begin; panel < panel_end; ++panel) {
        const std::int8_t* b = task.b + panel * task.padded_k * panel_width;
        const std::size_t columns = task.n - panel * panel_width;
        const std::size_t vectors =
            columns >= panel_width ? kVectors : (columns + kLanes - 1) / kLanes;
        const std::size_t block = row_block(vectors);
        for (std::size_t row = row_begin; row < row_end; row += block) {
            const std::size_t rows = row_end - row < block ? row_end - row : block;
            if (task.runs != nullptr) {
                block_rows.starts = task.runs->rows + row;
                block_rows.strides = task.runs->strides + row;
            } else {
                for (std::size_t r = 0; r < rows; ++r) {
                    starts[r] = a + (row + r) * task.padded_k;
                }
            }
            kBlockKernels[vectors - 1][rows - 1](task, block_rows, b, row, panel * panel_width);
        }
    }
}

NIMBUS_AVX512_VNNI std::uint64_t peak_avx512_vnni(std::size_t iterations, std::uint32_t& sink) {
    constexpr std::size_t kChains = 12;  // covers vpdpbusd's latency on two ports
    __m512i acc[kChains];
    for (auto& value : acc) {
        value = _mm512_setzero_si512();
    }
    const __m512i x = _mm512_set1_epi32(static_cast<int>(sink | 0x01010101));
    const __m512i w = _mm512_set1_epi32(0x02030405);
    for (std::size_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
        for (std::size_t c = 0; c < kChains; ++c) {
            acc[c] = _mm512_dpbusd_epi32(acc[c], x, w);
        }
    }
    for (const __m512i value : acc) {
        sink += static_cast<std::uint32_t>(_mm512_reduce_add_epi32(value));
    }
    return 2ull * kChains * kLanes * kGroup * iterations;
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
