// Quantized int8 GEMM: weights packed once per ISA path, activations u8 or s8, and a fused
// epilogue (bias, per-channel requantization to u8/s8, or dequantization to f32).
//
// With activations a[M, K], their zero point a_zp, weights w[N, K] and bias[N]:
//     acc[m, n] = sum_k (a[m, k] - a_zp) * w[n, k] + bias[n]     (int32, wrapping)
// and the result is one of
//     s32: acc
//     u8/s8: clamp(rint_f32(f32(acc) * scale[n] + t) + zero_point, lo, hi)   (half to even)
//     f32: act(f32(acc) * scale[n] + t)
//     u8/s8 after a float activation (gelu, silu, ...; output_scale set):
//          clamp(rint_f32(act(f32(acc) * scale[n]) / output_scale) + zero_point)   (no residual)
// where t = f32(r[m, n] - r_zp) * r_scale for an optional quantized residual r, else nothing,
// and act the epilogue's activation (sgemm.h), applied to each finished tile while it is in
// cache; which is the arithmetic of nimbus.compiler.ops.quant, bit for bit, on every path (the
// activation as the float kernels compute it; the quantization as quantize.h's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "sgemm.h"

namespace nimbus::kernels {

// Weights laid out for one ISA path. Column panels of `panel_width` outputs follow each other;
// inside a panel, groups of `k_group` consecutive depths of one output are adjacent (the
// operand shape of vpdpbusd for groups of 4, of vpmaddwd for groups of 2).
struct PackedWeights {
    Isa isa = Isa::portable;
    std::size_t n = 0;
    std::size_t k = 0;
    std::size_t padded_n = 0;  // n rounded up to the panel width; padding is zero
    std::size_t padded_k = 0;  // k rounded up to the depth group (64 for AMX); padding is zero
    std::vector<std::int8_t> data;
    std::vector<std::int32_t> column_sums;  // sum_k w[n, k], which folds in a_zp at run time
};

// The padded_k of k depths packed for `isa`: activation rows of that many bytes are read in
// place.
std::size_t packed_depth(std::size_t k, Isa isa);

// w is row-major [n, k]; k must not exceed kMaxDepthU8S8 (checked by the caller).
PackedWeights pack_weights(const std::int8_t* w, std::size_t n, std::size_t k, Isa isa);

enum class OutputType { s32, u8, s8, f32 };

// A quantized residual: u8 (or s8 when is_signed) values laid out like the result.
struct Residual {
    const void* data = nullptr;  // null for none
    bool is_signed = false;
    std::int32_t zero_point = 0;
    float scale = 0.0f;          // r_scale: s_r / s_out, or s_r for an f32 result
};

// f32(r - r_zp) * r_scale of element `index`: the term a residual adds before rounding.
float residual_term(const Residual& residual, std::size_t index);

struct Epilogue {
    OutputType type = OutputType::s32;
    const std::int32_t* bias = nullptr;  // [n], or null for none
    const float* scale = nullptr;        // [n] multiplier (u8/s8) or scale (f32); unused for s32
    std::int32_t zero_point = 0;         // u8/s8: added after rounding, within the output type
    std::int32_t lo = 0;                 // u8/s8: clamp bounds, within the output type
    std::int32_t hi = 0;
    Residual residual;                   // u8/s8/f32 results only
    // f32 results: any activation. u8/s8 results: none, or a float activation (not relu or
    // relu6, which are lo and hi) with output_scale > 0 and no residual.
    Activation activation = Activation::none;
    float output_scale = 0.0f;
};

// Writes one finished accumulator (bias and zero-point terms already added) as element `index`
// of `out`, with the epilogue arithmetic above; `scale` is the value for its output channel.
// The scalar form every portable kernel shares.
void store_epilogue(OutputType type, void* out, std::size_t index, std::int32_t acc, float scale,
                    std::int32_t zero_point, std::int32_t lo, std::int32_t hi,
                    const Residual& residual = {});

// out[M, n] (row-major, of the epilogue's type) from a[M, k] (u8, or s8 when a_signed).
// Splits the work over at most `threads` threads.
void qgemm(const void* a, bool a_signed, std::size_t m, std::int32_t a_zero_point,
           const PackedWeights& weights, const Epilogue& epilogue, void* out,
           std::size_t threads);

// u8 activation rows that are not one matrix but read in place, an implicit GEMM over the
// windows of an image: row r is `runs` runs of `run_bytes` bytes (runs * run_bytes ==
// padded_k), run j at rows[r] + j * strides[r].
struct ActivationRuns {
    const std::uint8_t* const* rows;
    const std::size_t* strides;
    std::size_t runs;
    std::size_t run_bytes;  // a multiple of the VNNI depth group, 4
};

// The throughput of `isa`'s int8 multiply instruction alone, over accumulators in registers, on
// `threads` threads: 10^9 integer operations (2 per multiply-add) per second, measured over
// about 50 ms. The peak that the benchmarks relate the GEMMs to; the emulated AMX path has none
// (an std::invalid_argument).
double multiply_peak_gops(Isa isa, std::size_t threads);

// qgemm over `m` rows of `a`, for weights packed for the AVX512-VNNI path (the only one that
// reads activation runs) with padded_k == runs * run_bytes.
void qgemm_runs(const ActivationRuns& a, std::size_t m, std::int32_t a_zero_point,
                const PackedWeights& weights, const Epilogue& epilogue, void* out,
                std::size_t threads);

}  // namespace nimbus::kernels
