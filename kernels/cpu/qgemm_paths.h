// What the driver (qgemm.cpp) hands to the kernel of each ISA path. Declarations and constants
// only: an inline function here would be compiled into the files built for wider ISAs too.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qgemm.h"

namespace nimbus::kernels {

// How a path wants its operands: the weight layout of PackedWeights and the activation rows it
// reads (u8, or u16 for the AVX2 path, which multiplies 16-bit pairs), padded to padded_k, a
// multiple of depth_multiple; and the rows of the work tiles that threads take, a multiple of
// the kernel's row block.
struct PathLayout {
    std::size_t panel_width;
    std::size_t k_group;
    std::size_t activation_bytes;
    std::size_t depth_multiple;
    std::size_t tile_rows;
};

inline constexpr PathLayout kPortableLayout{32, 1, 1, 1, 48};
inline constexpr PathLayout kAvx2Layout{16, 2, 2, 2, 48};
inline constexpr PathLayout kAvx512VnniLayout{64, 4, 1, 4, 48};
// Two tiles of 16 columns side by side; a tile row holds 64 bytes of depth. Work tiles of four
// whole blocks of 32 rows (a block of 16 would use half the tiles of sums per weight tile):
// the epilogue of each block but the last runs under the next one's multiplies, which two
// blocks left to every other one (BERT's 1024 x 3072 x 768 layer on two threads: 2.1 -> 2.4
// TOPS).
inline constexpr PathLayout kAmxLayout{32, 4, 1, 64, 128};

// One call, shared read-only by every thread. The per-column arrays cover padded_n columns.
struct GemmTask {
    const void* a;                       // prepared activations, rows of padded_k elements,
    const ActivationRuns* runs;          // or, when not null, these rows (VNNI path only)
    const std::int8_t* b;                // PackedWeights::data
    std::size_t padded_k;
    std::size_t n;
    const std::int32_t* column_offset;   // bias - a_zp * column_sums, wrapping
    const float* scale;                  // zero past n
    OutputType type;
    std::int32_t zero_point;
    std::int32_t lo;
    std::int32_t hi;
    Residual residual;                   // [M, n] like out, or none
    void* out;                           // [M, n], row-major
    // A float activation that the AVX-512 epilogue applies in registers (Path::
    // activates_in_registers): on an f32 result, or between the f32 values and the quantization
    // of a u8/s8 one by output_scale (quantize.cpp's arithmetic, lo and hi the type's bounds).
    Activation activation = Activation::none;
    float output_scale = 0.0f;
};

// The path's multiply instruction alone, `iterations` times over accumulators that stay in
// registers: what the GEMM would reach if it did nothing else (the benchmarks' peak). Each
// returns the integer operations it did (2 per multiply-add), summed into `sink` so that no
// compiler drops the loop.
std::uint64_t peak_portable(std::size_t iterations, std::uint32_t& sink);
#ifdef NIMBUS_X86_KERNELS
std::uint64_t peak_avx2(std::size_t iterations, std::uint32_t& sink);
std::uint64_t peak_avx512_vnni(std::size_t iterations, std::uint32_t& sink);
std::uint64_t peak_amx(std::size_t iterations, std::uint32_t& sink);
#endif

// Each computes rows [row_begin, row_end) of the columns in panels [panel_begin, panel_end).
void run_portable(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                  std::size_t panel_begin, std::size_t panel_end);
#ifdef NIMBUS_X86_KERNELS
void run_avx2(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
              std::size_t panel_begin, std::size_t panel_end);
void run_avx512_vnni(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                     std::size_t panel_begin, std::size_t panel_end);
// Both read matrix rows only (task.runs is null).
void run_amx(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
             std::size_t panel_begin, std::size_t panel_end);
void run_amx_emulated(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                      std::size_t panel_begin, std::size_t panel_end);
// The AMX kernels leave the tiles configured from one call to the next; the driver ends each
// thread's share of a GEMM with these (tilerelease), so that no other code on the thread
// (another library's AMX kernels) finds the tiles in a configuration it did not set.
void release_amx();
void release_amx_emulated();
#endif

}  // namespace nimbus::kernels
