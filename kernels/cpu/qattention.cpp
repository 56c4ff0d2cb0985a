// The integer attention driver: items of whole query rows as the float attention cuts them
// (attention.cpp), the int32 products on the AVX512-VNNI path (packed operands, vpdpbusd) or in
// plain loops, and the float steps between them on the float path's row primitives.
#include "qattention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention_paths.h"
#include "cache_line.h"
#include "sizes.h"
#include "vector_math_polynomials.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kGroup = 4;  // bytes of one vpdpbusd lane
constexpr std::size_t kStrip = 32;  // columns per strip of the packed operands

// Element (row, column) of operand `m`'s matrix b as a signed value.
inline std::int32_t element(const QuantizedMatrices& m, std::size_t b, std::size_t row,
                            std::size_t column) {
    const std::uint8_t byte = static_cast<const std::uint8_t*>(m.data)[
        m.layout.offsets[b] + row * m.layout.row_stride + column];
    return m.is_signed ? static_cast<std::int8_t>(byte) : byte;
}

// The int32 products without packing: scores[i, j] = sum_d (q - zq)(k - zk) and
// values[i, c] = sum_j codes[i, j] (v - zv), wrapping as int32 does.
void scores_in_loops(const QuantizedMatrices& q, const QuantizedMatrices& k, std::size_t b,
                     std::size_t first, std::size_t rows, std::size_t s, std::size_t d,
                     std::int32_t* scores, std::size_t stride) {
    for (std::size_t i = 0; i < rows; ++i) {
        for (std::size_t j = 0; j < s; ++j) {
            std::uint32_t sum = 0;
            for (std::size_t depth = 0; depth < d; ++depth) {
                sum += static_cast<std::uint32_t>((element(q, b, first + i, depth) - q.zero_point) *
                                                  (element(k, b, j, depth) - k.zero_point));
            }
            scores[i * stride + j] = static_cast<std::int32_t>(sum);
        }
    }
}

void values_in_loops(const std::uint8_t* codes, std::size_t codes_stride,
                     const QuantizedMatrices& v, std::size_t b, std::size_t rows, std::size_t s,
                     std::size_t dv, std::int32_t* values, std::size_t stride) {
    for (std::size_t i = 0; i < rows; ++i) {
        for (std::size_t c = 0; c < dv; ++c) {
            std::uint32_t sum = 0;
            for (std::size_t j = 0; j < s; ++j) {
                sum += static_cast<std::uint32_t>(codes[i * codes_stride + j] *
                                                  (element(v, b, j, c) - v.zero_point));
            }
            values[i * stride + c] = static_cast<std::int32_t>(sum);
        }
    }
}

// One participant's scratch, each part on its own cache lines.
struct Scratch {
    std::int8_t* keys;           // k' packed [strips of s][d groups][kStrip][4]
    std::int32_t* key_terms;     // per row of k: the sum of k', then -zq' times that
    std::int8_t* values;         // v' packed [strips of dv][s groups][kStrip][4]
    std::uint8_t* queries;       // the item's q' rows, depth padded to whole groups
    std::int32_t* scores;        // [query_block, padded_s]: int32, then float in place
    std::uint8_t* codes;         // [query_block, padded s groups * 4]
    std::int32_t* outputs;       // [query_block, padded_dv]
    std::uint32_t* query_sums;   // per query row: the sum of its q'
    std::uint32_t* code_sums;    // per query row: the sum of its codes
    float* factors;              // per query row: value_scale / the sum of its codes
};

}  // namespace

std::uint32_t softmax_codes_portable(const float* x, std::size_t n, float peak,
                                     std::uint8_t* codes) {
    using namespace polynomials;
    std::uint32_t sum = 0;
    for (std::size_t j = 0; j < n; ++j) {
        const float u = std::max(x[j] - peak, kCodeFloor) * kLog2e;
        const float power = std::nearbyint(u);
        const float f = u - power;
        float p = kCode[0];
        for (std::size_t c = 1; c < std::size(kCode); ++c) {
            p = p * f + kCode[c];
        }
        codes[j] = static_cast<std::uint8_t>(std::nearbyint(std::ldexp(p, static_cast<int>(power))));
        sum += codes[j];
    }
    return sum;
}

void qattention(const QuantizedMatrices& q, const QuantizedMatrices& k,
                const QuantizedMatrices& v, const AttentionMask& mask, float score_scale,
                float value_scale, const AttentionShape& shape, float* out,
                const MatrixLayout& out_layout, std::size_t threads, Isa isa) {
    const auto [batch, l, s, d, dv] = shape;
    if (batch * l * dv == 0) {
        return;
    }
    const RowKernels& path = row_kernels(isa);
#ifdef NIMBUS_X86_KERNELS
    const bool vnni = vector_isa(isa) == Isa::avx512_vnni;
    const auto codes_of = vnni ? softmax_codes_avx512 : softmax_codes_portable;
#else
    constexpr bool vnni = false;
    const auto codes_of = softmax_codes_portable;
#endif
    threads = std::max<std::size_t>(threads, 1);
    const std::size_t query_block = attention_query_block(batch, l, s, threads);
    const std::size_t blocks = (l + query_block - 1) / query_block;
    const std::size_t items = batch * blocks;
    const std::size_t count = std::min(threads, items);
    const std::size_t d_groups = ceil_div(d, kGroup);
    const std::size_t s_groups = ceil_div(s, kGroup);
    const std::size_t padded_s = round_up(s, kStrip);
    const std::size_t padded_dv = round_up(dv, kStrip);
    const std::size_t codes_stride = s_groups * kGroup;
    // Byte sizes of the scratch parts, each on whole cache lines.
    const std::size_t part_bytes[] = {
        whole_lines<std::uint8_t>(vnni ? padded_s * d_groups * kGroup : 0),
        whole_lines<std::uint8_t>(padded_s * sizeof(std::int32_t)),
        whole_lines<std::uint8_t>(vnni ? padded_dv * s_groups * kGroup : 0),
        whole_lines<std::uint8_t>(query_block * d_groups * kGroup),
        whole_lines<std::uint8_t>(query_block * padded_s * sizeof(std::int32_t)),
        whole_lines<std::uint8_t>(query_block * codes_stride),
        whole_lines<std::uint8_t>(query_block * padded_dv * sizeof(std::int32_t)),
        whole_lines<std::uint8_t>(query_block * sizeof(std::uint32_t)),
        whole_lines<std::uint8_t>(query_block * sizeof(std::uint32_t)),
        whole_lines<std::uint8_t>(query_block * sizeof(float))};
    std::size_t slot_bytes = 0;
    for (const std::size_t bytes : part_bytes) {
        slot_bytes += bytes;
    }
    const CacheLineArray<std::uint8_t> memory = cache_line_array<std::uint8_t>(count * slot_bytes);
    std::vector<Scratch> scratch(count);
    for (std::size_t p = 0; p < count; ++p) {
        std::uint8_t* part = memory.get() + p * slot_bytes;
        const auto next = [&](std::size_t index) {
            std::uint8_t* start = part;
            part += part_bytes[index];
            return start;
        };
        scratch[p] = {reinterpret_cast<std::int8_t*>(next(0)),
                      reinterpret_cast<std::int32_t*>(next(1)),
                      reinterpret_cast<std::int8_t*>(next(2)),
                      next(3),
                      reinterpret_cast<std::int32_t*>(next(4)),
                      next(5),
                      reinterpret_cast<std::int32_t*>(next(6)),
                      reinterpret_cast<std::uint32_t*>(next(7)),
                      reinterpret_cast<std::uint32_t*>(next(8)),
                      reinterpret_cast<float*>(next(9))};
    }
    // The VNNI products take q' = q as u8 (s8 q + 128) and k', v' as s8 (u8 k - 128), and
    // correct for the zero points of those forms:
    //   sum (q - zq)(k - zk) = q'.k' - zk' sum q' - zq' sum k' + d zq' zk'.
    const auto q_zero = static_cast<std::uint32_t>(q.zero_point + (q.is_signed ? 128 : 0));
    const auto k_zero = static_cast<std::uint32_t>(k.zero_point - (k.is_signed ? 0 : 128));
    const auto v_zero = static_cast<std::uint32_t>(v.zero_point - (v.is_signed ? 0 : 128));
    const std::uint32_t both_zeros = static_cast<std::uint32_t>(d) * q_zero * k_zero;
    const auto* q_bytes = static_cast<const std::uint8_t*>(q.data);
    // The matrix whose k and v each participant holds packed (items go batch-major, and each
    // participant takes a run of them).
    std::vector<std::size_t> packed(count, batch);
    parallel_items(items, count, [&](std::size_t participant, std::size_t item) {
        const Scratch& own = scratch[participant];
        const std::size_t b = item / blocks;
        const std::size_t first = item % blocks * query_block;
        const std::size_t rows = std::min(query_block, l - first);
        float* const scores = reinterpret_cast<float*>(own.scores);
#ifdef NIMBUS_X86_KERNELS
        if (vnni) {
            if (packed[participant] != b) {
                pack_keys_avx512_vnni(static_cast<const std::uint8_t*>(k.data) + k.layout.offsets[b],
                                      k.layout.row_stride, s, d, !k.is_signed, own.keys,
                                      own.key_terms);
                // The columns' part of the zero-point terms: -zq' sum k'.
                for (std::size_t j = 0; j < s; ++j) {
                    own.key_terms[j] = static_cast<std::int32_t>(
                        0u - q_zero * static_cast<std::uint32_t>(own.key_terms[j]));
                }
                pack_values_avx512_vnni(
                    static_cast<const std::uint8_t*>(v.data) + v.layout.offsets[b],
                    v.layout.row_stride, s, dv, !v.is_signed, own.values);
                packed[participant] = b;
            }
            const std::size_t q_stride = d_groups * kGroup;
            for (std::size_t i = 0; i < rows; ++i) {
                own.query_sums[i] = copy_queries_avx512_vnni(
                    q_bytes + q.layout.offsets[b] + (first + i) * q.layout.row_stride, d,
                    q.is_signed, own.queries + i * q_stride, q_stride);
            }
            dot_strips_avx512_vnni(own.queries, q_stride, rows, own.keys, d_groups,
                                   padded_s / kStrip, own.scores, padded_s);
            for (std::size_t i = 0; i < rows; ++i) {
                // The row's part: d zq' zk' - zk' sum q'.
                scores_to_float_avx512_vnni(
                    own.scores + i * padded_s, reinterpret_cast<const std::uint32_t*>(own.key_terms),
                    both_zeros - k_zero * own.query_sums[i], s);
            }
        } else
#endif
        {
            scores_in_loops(q, k, b, first, rows, s, d, own.scores, padded_s);
            for (std::size_t i = 0; i < rows; ++i) {
                for (std::size_t j = 0; j < s; ++j) {
                    scores[i * padded_s + j] = static_cast<float>(own.scores[i * padded_s + j]);
                }
            }
        }
        constexpr float kInfinity = std::numeric_limits<float>::infinity();
        for (std::size_t i = 0; i < rows; ++i) {
            float* row = scores + i * padded_s;
            std::uint8_t* codes = own.codes + i * codes_stride;
            std::fill(codes + s, codes + codes_stride, std::uint8_t{0});
            const float peak = scale_and_mask(path, row, s, score_scale, mask, b, first + i);
            own.code_sums[i] = 0;
            if (!std::isfinite(peak)) {  // fully masked (-inf): zeros; NaN or +inf: NaN
                std::fill(codes, codes + s, std::uint8_t{0});
                own.factors[i] = peak == -kInfinity ? 0.0f : std::numeric_limits<float>::quiet_NaN();
            } else {
                own.code_sums[i] = codes_of(row, s, peak, codes);
                own.factors[i] = value_scale / static_cast<float>(own.code_sums[i]);
            }
        }
        std::uint32_t value_zero = v_zero;
#ifdef NIMBUS_X86_KERNELS
        if (vnni) {
            dot_strips_avx512_vnni(own.codes, codes_stride, rows, own.values, s_groups,
                                   padded_dv / kStrip, own.outputs, padded_dv);
        } else
#endif
        {
            values_in_loops(own.codes, codes_stride, v, b, rows, s, dv, own.outputs, padded_dv);
            value_zero = 0;
        }
        for (std::size_t i = 0; i < rows; ++i) {
            const std::uint32_t zero_term = value_zero * own.code_sums[i];
            const std::int32_t* source = own.outputs + i * padded_dv;
            float* target = out + out_layout.offsets[b] + (first + i) * out_layout.row_stride;
#ifdef NIMBUS_X86_KERNELS
            if (vnni) {
                outputs_to_float_avx512_vnni(source, zero_term, own.factors[i], target, dv);
                continue;
            }
#endif
            for (std::size_t c = 0; c < dv; ++c) {
                const auto total = static_cast<std::int32_t>(
                    static_cast<std::uint32_t>(source[c]) - zero_term);
                target[c] = static_cast<float>(total) * own.factors[i];
            }
        }
    });
}

}  // namespace nimbus::kernels
