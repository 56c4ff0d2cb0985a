// Integer attention: q @ k^T and P @ v as exact int32 products of int8 operands, with the
// softmax between them in float32 (the definition is qattention_reference's, in the runtime's
// cpu_ops/quant.py, which this matches bit for bit on every path).
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention.h"
#include "isa.h"

namespace nimbus::kernels {

// A u8 or s8 operand [batch, rows, depth] laid out as its MatrixLayout says (in bytes), with
// its zero point.
struct QuantizedMatrices {
    const void* data = nullptr;
    MatrixLayout layout;
    bool is_signed = false;
    std::int32_t zero_point = 0;
};

// For each matrix b and query row i:
//   x[j]  = f32(sum_d (q[i, d] - zq) * (k[j, d] - zk)) * score_scale, masked as attention() masks
//   e[j]  = code(x[j] - max_j x[j])                         (u8, 255 at the maximum)
//   out[i, c] = f32(sum_j e[j] * (v[j, c] - zv)) * (value_scale / f32(sum_j e[j]))
// with the integer sums wrapping in int32. Rows whose scores are all -inf give zeros, rows with
// a NaN or +inf score NaN, as attention() does.
void qattention(const QuantizedMatrices& q, const QuantizedMatrices& k,
                const QuantizedMatrices& v, const AttentionMask& mask, float score_scale,
                float value_scale, const AttentionShape& shape, float* out,
                const MatrixLayout& out_layout, std::size_t threads, Isa isa);

// The softmax weights of a row as u8 codes: code(t) = rint(255 * exp(t)) for t = x[j] - peak,
// evaluated in float32 steps that every path repeats exactly (vector_math_polynomials.h, kCode).
// Writes codes[0, n) and returns their sum; for a finite peak at least every x.
std::uint32_t softmax_codes_portable(const float* x, std::size_t n, float peak,
                                     std::uint8_t* codes);

// Depths per group of the packed operands: the 4 bytes of one vpdpbusd lane.
constexpr std::size_t kQAttentionGroup = 4;

#ifdef NIMBUS_X86_KERNELS
// The AVX512-VNNI path (qattention_avx512_vnni.cpp). Packed operands are strips of
// kAttentionStrip columns (attention_paths.h: k is packed by the float attention's transpose);
// inside a strip, groups of 4 depths, each 4 consecutive bytes per column (vpdpbusd's operand),
// zero past the matrix.

// k' [s, d] (s8: k xor 0x80 when k is u8) packed as the B operand of q @ k^T (its columns are
// k's rows), and each row's sum of k' (column_sums, s rounded up to whole strips).
void pack_keys_avx512_vnni(const std::uint8_t* k, std::size_t row_stride, std::size_t s,
                           std::size_t d, bool flip, std::int8_t* packed,
                           std::int32_t* column_sums);
// v' [s, dv] (s8 likewise) packed as the B operand of P @ v (its columns are v's columns).
void pack_values_avx512_vnni(const std::uint8_t* v, std::size_t row_stride, std::size_t s,
                             std::size_t dv, bool flip, std::int8_t* packed);
// One row of q' (u8: q xor 0x80 when q is s8) into `row`, zero from d to padded_d; returns
// the sum of q'.
std::uint32_t copy_queries_avx512_vnni(const std::uint8_t* q, std::size_t d, bool flip,
                                       std::uint8_t* row, std::size_t padded_d);
// c[r, 0 .. strips * kAttentionStrip) = a[r] @ packed for `rows` rows of u8 a, each `groups`
// groups of 4 bytes, row_stride bytes apart; c rows c_stride int32 apart.
void dot_strips_avx512_vnni(const std::uint8_t* a, std::size_t row_stride, std::size_t rows,
                            const std::int8_t* packed, std::size_t groups, std::size_t strips,
                            std::int32_t* c, std::size_t c_stride);
// row[j] = f32(row[j] + row_term + terms[j]) in place (int32 in, float out), j < n.
void scores_to_float_avx512_vnni(std::int32_t* row, const std::uint32_t* terms,
                                 std::uint32_t row_term, std::size_t n);
std::uint32_t softmax_codes_avx512(const float* x, std::size_t n, float peak,
                                   std::uint8_t* codes);
// out[c] = f32(sums[c] - zero_term) * factor, c < n.
void outputs_to_float_avx512_vnni(const std::int32_t* sums, std::uint32_t zero_term,
                                  float factor, float* out, std::size_t n);
#endif

}  // namespace nimbus::kernels
