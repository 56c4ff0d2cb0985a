// The AMX path of the int8 GEMM. tdpbusd multiplies a tile of 16 rows x 64 u8 activations by a
// tile of 64 depths x 16 columns of s8 weights (16 rows of 4-byte depth groups, the panel layout
// of vpdpbusd) and adds the products to 16 x 16 int32 sums, exactly. A block of 32 rows x 32
// columns keeps four tiles of sums over the whole depth (two tiles of activations, two of
// weights: all eight tile registers), then stores them to L1 for the AVX-512 epilogue that the
// VNNI path runs on its registers.
//
// The kernel is written once over a tile interface, compiled for the hardware (Isa::amx) and
// for tiles emulated in software with the checks the hardware makes (Isa::amx_emulated), so
// that its blocking, packing and tails are tested bit-exactly on CPUs without AMX.
#include "qgemm_paths.h"

#ifdef NIMBUS_X86_KERNELS

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "qgemm_store_avx512.h"

namespace nimbus::kernels {
namespace {

using avx512::kLanes;
using avx512::store_column;

constexpr std::size_t kTileRows = 16;    // rows of a tile of activations or sums
constexpr std::size_t kTileBytes = 64;   // bytes of a tile row: 64 depths, or 16 int32 sums
constexpr std::size_t kTileCount = 8;
constexpr std::size_t kPanelWidth = kAmxLayout.panel_width;
constexpr std::size_t kBlockRows = 2 * kTileRows;
// Bytes from one depth group of a panel's weights to the next: the row stride of a weight tile.
constexpr std::size_t kPanelGroupBytes = kPanelWidth * kAmxLayout.k_group;
static_assert(kPanelWidth == 2 * kLanes && kTileBytes == kLanes * kAmxLayout.k_group);

// What ldtilecfg reads: palette 1, then per tile its bytes per row and its rows.
struct alignas(64) TileConfig {
    std::uint8_t palette = 1;
    std::uint8_t start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t bytes_per_row[16] = {};
    std::uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// The tile registers: sums of the block's low and high 16 rows for columns 0-15 and 16-31,
// the two 16-row halves of its activations, and the weights of the two column halves.
constexpr int kSumsLowLeft = 0;
constexpr int kSumsLowRight = 1;
constexpr int kSumsHighLeft = 2;
constexpr int kSumsHighRight = 3;
constexpr int kActivationsLow = 4;
constexpr int kActivationsHigh = 5;
constexpr int kWeightsLeft = 6;
constexpr int kWeightsRight = 7;

// Tiles for a block whose halves have low_rows and high_rows rows (both 1 to 16).
TileConfig block_config(std::size_t low_rows, std::size_t high_rows) {
    TileConfig config;
    for (std::size_t tile = 0; tile < kTileCount; ++tile) {
        config.bytes_per_row[tile] = kTileBytes;
        config.rows[tile] = kTileRows;
    }
    for (const int tile : {kSumsLowLeft, kSumsLowRight, kActivationsLow}) {
        config.rows[tile] = static_cast<std::uint8_t>(low_rows);
    }
    for (const int tile : {kSumsHighLeft, kSumsHighRight, kActivationsHigh}) {
        config.rows[tile] = static_cast<std::uint8_t>(high_rows);
    }
    return config;
}

// The instructions. The tile number is an immediate in the mnemonic (%c: a bare constant);
// loads and stores name "memory" so that the compiler orders them with plain accesses.
struct HardwareTiles {
    static void configure(const TileConfig& config) {
        __asm__ volatile("ldtilecfg %0" ::"m"(config));
    }
    template <int Tile>
    static void zero() {
        __asm__ volatile("tilezero %%tmm%c0" ::"i"(Tile));
    }
    template <int Tile>
    static void load(const void* base, std::size_t stride) {
        __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride), "i"(Tile)
                         : "memory");
    }
    template <int Tile>
    static void store(void* base, std::size_t stride) {
        __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride), "i"(Tile)
                         : "memory");
    }
    // sums += activations . weights
    template <int Sums, int Activations, int Weights>
    static void multiply() {
        __asm__ volatile("tdpbusd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(Sums), "i"(Activations),
                         "i"(Weights));
    }
    static void release() { __asm__ volatile("tilerelease" ::: "memory"); }
};

// The tile registers of a thread in software. What would fault on the hardware (a bad
// configuration, tiles used unconfigured, shapes that do not chain) aborts with its reason.
struct EmulatedState {
    TileConfig config;
    bool configured = false;
    std::uint8_t tiles[kTileCount][kTileRows][kTileBytes];
};
thread_local EmulatedState emulated;

[[noreturn]] void fault(const char* reason) {
    std::fprintf(stderr, "nimbus: emulated AMX fault: %s\n", reason);
    std::abort();
}

struct EmulatedTiles {
    static void configure(const TileConfig& config) {
        bool valid = config.palette == 1 && config.start_row == 0;
        for (std::size_t tile = 0; tile < 16; ++tile) {
            const std::size_t rows = config.rows[tile];
            const std::size_t bytes = config.bytes_per_row[tile];
            valid = valid && (tile < kTileCount ? rows <= kTileRows && bytes <= kTileBytes &&
                                                      (rows == 0) == (bytes == 0)
                                                : rows == 0 && bytes == 0);
        }
        for (const std::uint8_t byte : config.reserved) {
            valid = valid && byte == 0;
        }
        if (!valid) {
            fault("invalid tile configuration");
        }
        emulated.config = config;
        emulated.configured = true;
        std::memset(emulated.tiles, 0, sizeof(emulated.tiles));
    }
    template <int Tile>
    static void zero() {
        shape(Tile);
        std::memset(emulated.tiles[Tile], 0, sizeof(emulated.tiles[Tile]));
    }
    template <int Tile>
    static void load(const void* base, std::size_t stride) {
        const auto [rows, bytes] = shape(Tile);
        std::memset(emulated.tiles[Tile], 0, sizeof(emulated.tiles[Tile]));
        for (std::size_t row = 0; row < rows; ++row) {
            std::memcpy(emulated.tiles[Tile][row],
                        static_cast<const std::uint8_t*>(base) + row * stride, bytes);
        }
    }
    template <int Tile>
    static void store(void* base, std::size_t stride) {
        const auto [rows, bytes] = shape(Tile);
        for (std::size_t row = 0; row < rows; ++row) {
            std::memcpy(static_cast<std::uint8_t*>(base) + row * stride,
                        emulated.tiles[Tile][row], bytes);
        }
    }
    template <int Sums, int Activations, int Weights>
    static void multiply() {
        const auto [rows, sum_bytes] = shape(Sums);
        const auto [activation_rows, depth] = shape(Activations);
        const auto [groups, weight_bytes] = shape(Weights);
        if (activation_rows != rows || weight_bytes != sum_bytes || depth != groups * 4 ||
            sum_bytes % 4 != 0) {
            fault("tdpbusd on tiles whose shapes do not chain");
        }
        for (std::size_t row = 0; row < rows; ++row) {
            const std::uint8_t* activations = emulated.tiles[Activations][row];
            for (std::size_t column = 0; column < sum_bytes / 4; ++column) {
                std::uint32_t sum = 0;
                std::memcpy(&sum, emulated.tiles[Sums][row] + 4 * column, 4);
                for (std::size_t group = 0; group < groups; ++group) {
                    for (std::size_t byte = 0; byte < 4; ++byte) {
                        const auto weight =
                            static_cast<std::int8_t>(emulated.tiles[Weights][group][4 * column + byte]);
                        sum += static_cast<std::uint32_t>(activations[4 * group + byte] * weight);
                    }
                }
                std::memcpy(emulated.tiles[Sums][row] + 4 * column, &sum, 4);
            }
        }
    }
    static void release() { emulated.configured = false; }

   private:
    struct Shape {
        std::size_t rows;
        std::size_t bytes;
    };
    static Shape shape(int tile) {
        if (!emulated.configured) {
            fault("tile instruction without a tile configuration");
        }
        return {emulated.config.rows[tile], emulated.config.bytes_per_row[tile]};
    }
};

// The epilogue of a block whose sums wait in a buffer, run a piece (16 rows x 16 columns) at a
// time between the tile multiplies of the next block: the vector units finish one block while
// the tile unit computes the next. Run as one pass after each block, the epilogue left the tile
// unit idle, and its stores held up the next block's tile loads: a 512 x 512 x 512 GEMM spent
// as long there as in its multiplies (2048 x 64 x 576 with u8 results on one core: 1.9 TOPS
// that way, 2.4 interleaved).
class PendingBlock {
   public:
    static constexpr std::size_t kPieces = (kBlockRows / kTileRows) * (kPanelWidth / kLanes);

    void set(const std::int32_t (*sums)[kPanelWidth], std::size_t row, std::size_t rows,
             std::size_t col) {
        sums_ = sums;
        row_ = row;
        rows_ = rows;
        col_ = col;
        done_ = 0;
    }
    // Runs the pieces up to `pieces` of kPieces.
    NIMBUS_AVX512_VNNI void run_until(const GemmTask& task, std::size_t pieces) {
        for (; done_ < pieces && sums_ != nullptr; ++done_) {
            const std::size_t half = done_ / (kPanelWidth / kLanes) * kTileRows;
            const std::size_t offset = done_ % (kPanelWidth / kLanes) * kLanes;
            if (half >= rows_) {
                continue;
            }
            const std::size_t count = std::min(kTileRows, rows_ - half);
            if (count == kTileRows) {
                __m512i values[kTileRows];
                for (std::size_t r = 0; r < kTileRows; ++r) {
                    values[r] = _mm512_load_si512(sums_[half + r] + offset);
                }
                store_column<kTileRows>(task, row_ + half, col_ + offset, values);
                continue;
            }
            for (std::size_t r = 0; r < count; ++r) {
                const __m512i values[1] = {_mm512_load_si512(sums_[half + r] + offset)};
                store_column<1>(task, row_ + half + r, col_ + offset, values);
            }
        }
    }

   private:
    const std::int32_t (*sums_)[kPanelWidth] = nullptr;  // null: no block pending
    std::size_t row_ = 0;
    std::size_t rows_ = 0;
    std::size_t col_ = 0;
    std::size_t done_ = 0;
};

// Sums of the block's rows (one or two halves) and both column halves over the whole depth,
// with the pending block's epilogue spread over the depth steps.
template <typename Tiles, bool kBothHalves>
NIMBUS_AVX512_VNNI void multiply_block(const GemmTask& task, const std::uint8_t* a,
                                       std::size_t depth, const std::int8_t* b,
                                       PendingBlock& pending) {
    Tiles::template zero<kSumsLowLeft>();
    Tiles::template zero<kSumsLowRight>();
    if constexpr (kBothHalves) {
        Tiles::template zero<kSumsHighLeft>();
        Tiles::template zero<kSumsHighRight>();
    }
    const std::size_t steps = depth / kTileBytes;
    for (std::size_t step = 0; step < steps; ++step) {
        const std::size_t offset = step * kTileBytes;
        // 16 depth groups of the panel, 128 bytes each; the right half 64 bytes in.
        const std::int8_t* weights = b + offset * kPanelWidth;
        Tiles::template load<kWeightsLeft>(weights, kPanelGroupBytes);
        Tiles::template load<kWeightsRight>(weights + kTileBytes, kPanelGroupBytes);
        Tiles::template load<kActivationsLow>(a + offset, depth);
        Tiles::template multiply<kSumsLowLeft, kActivationsLow, kWeightsLeft>();
        Tiles::template multiply<kSumsLowRight, kActivationsLow, kWeightsRight>();
        if constexpr (kBothHalves) {
            Tiles::template load<kActivationsHigh>(a + kTileRows * depth + offset, depth);
            Tiles::template multiply<kSumsHighLeft, kActivationsHigh, kWeightsLeft>();
            Tiles::template multiply<kSumsHighRight, kActivationsHigh, kWeightsRight>();
        }
        pending.run_until(task, (step + 1) * PendingBlock::kPieces / steps);
    }
}

// The tile shapes that this thread configured, {0, 0} when none: the tiles stay configured from
// one work tile to the next (ldtilecfg and tilerelease cost about 50 ns a pair, a few percent of
// a small tile) until the driver ends the thread's share of a GEMM with release_amx.
struct ConfiguredRows {
    std::size_t low = 0;
    std::size_t high = 0;
};
thread_local ConfiguredRows configured;

template <typename Tiles>
NIMBUS_AVX512_VNNI void run_tiles(const GemmTask& task, std::size_t row_begin,
                                  std::size_t row_end, std::size_t panel_begin,
                                  std::size_t panel_end) {
    const auto* a = static_cast<const std::uint8_t*>(task.a);
    const std::size_t depth = task.padded_k;
    // Two buffers: the block being computed stores its sums into one while the other's wait
    // for their epilogue.
    alignas(64) std::int32_t sums[2][kBlockRows][kPanelWidth];
    constexpr std::size_t kSumsStride = sizeof(sums[0][0]);
    PendingBlock pending;
    std::size_t buffer = 0;
    for (std::size_t panel = panel_begin; panel < panel_end; ++panel) {
        const std::int8_t* b = task.b + panel * depth * kPanelWidth;
        for (std::size_t row = row_begin; row < row_end; row += kBlockRows) {
            const std::size_t rows = std::min(kBlockRows, row_end - row);
            const std::size_t low = std::min(kTileRows, rows);
            const std::size_t high = rows - low;
            // Configuring zeroes the tiles; their sums are stored by then. An unused half
            // keeps 16 rows.
            const std::size_t high_rows = high > 0 ? high : kTileRows;
            if (low != configured.low || high_rows != configured.high) {
                configured = {low, high_rows};
                Tiles::configure(block_config(low, high_rows));
            }
            const std::uint8_t* rows_a = a + row * depth;
            auto& block_sums = sums[buffer];
            if (high > 0) {
                multiply_block<Tiles, true>(task, rows_a, depth, b, pending);
                Tiles::template store<kSumsHighLeft>(block_sums[kTileRows], kSumsStride);
                Tiles::template store<kSumsHighRight>(block_sums[kTileRows] + kLanes,
                                                      kSumsStride);
            } else {
                multiply_block<Tiles, false>(task, rows_a, depth, b, pending);
            }
            Tiles::template store<kSumsLowLeft>(block_sums[0], kSumsStride);
            Tiles::template store<kSumsLowRight>(block_sums[0] + kLanes, kSumsStride);
            pending.run_until(task, PendingBlock::kPieces);  // under 4 depth steps leave some
            pending.set(block_sums, row, rows, panel * kPanelWidth);
            buffer ^= 1;
        }
    }
    pending.run_until(task, PendingBlock::kPieces);
}

template <typename Tiles>
void release_tiles() {
    if (configured.low > 0) {
        Tiles::release();
        configured = {};
    }
}

}  // namespace

void run_amx(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
             std::size_t panel_begin, std::size_t panel_end) {
    run_tiles<HardwareTiles>(task, row_begin, row_end, panel_begin, panel_end);
}

void run_amx_emulated(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                      std::size_t panel_begin, std::size_t panel_end) {
    run_tiles<EmulatedTiles>(task, row_begin, row_end, panel_begin, panel_end);
}

void release_amx() { release_tiles<HardwareTiles>(); }

void release_amx_emulated() { release_tiles<EmulatedTiles>(); }

std::uint64_t peak_amx(std::size_t iterations, std::uint32_t& sink) {
    // Four chains of sums, as in a block; the operand tiles hold whatever tilezero left.
    HardwareTiles::configure(block_config(kTileRows, kTileRows));
    HardwareTiles::zero<kActivationsLow>();
    HardwareTiles::zero<kActivationsHigh>();
    HardwareTiles::zero<kWeightsLeft>();
    HardwareTiles::zero<kWeightsRight>();
    for (std::size_t i = 0; i < iterations; ++i) {
        HardwareTiles::multiply<kSumsLowLeft, kActivationsLow, kWeightsLeft>();
        HardwareTiles::multiply<kSumsLowRight, kActivationsLow, kWeightsRight>();
        HardwareTiles::multiply<kSumsHighLeft, kActivationsHigh, kWeightsLeft>();
        HardwareTiles::multiply<kSumsHighRight, kActivationsHigh, kWeightsRight>();
    }
    alignas(64) std::int32_t sums[kTileRows][kLanes];
    HardwareTiles::store<kSumsLowLeft>(sums, sizeof(sums[0]));
    HardwareTiles::release();
    configured = {};
    sink += static_cast<std::uint32_t>(sums[0][0]);
    return 2ull * 4 * kTileRows * kLanes * kTileBytes * iterations;
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
