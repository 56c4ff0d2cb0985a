// The integer attention driver: items of whole query rows as the float attention cuts them
// (attention.cpp), the int32 products on the AVX512-VNNI path (packed operands, vpdpbusd) or in
// plain loops, and the float steps between them on the float path's row primitives.
#include "qattention.h"

#ifdef NIMBUS_X86_KERNELS
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention_paths.h"
#include "cache_line.h"
#include "sizes.h"
#include "vector_math_polynomials.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kGroup = kQAttentionGroup;

// The paths without VNNI multiply centered int16 operands (x - z, |x - z| <= 255) in pairs of
// depths, as vpmaddwd does: exact, with no saturation, wrapping in int32. A is rows of int16
// (zero past the depth); B is [depth / 2][columns][2]: element (k, j) at
// (k / 2 * padded_n + j) * 2 + k % 2, zero past the depth.

// x - z for a stored byte of `m`: an s8 value is its byte xor 0x80, less 128.
struct Centering {
    std::uint8_t flip;
    std::int32_t zero;
    explicit Centering(const QuantizedMatrices& m)
        : flip(m.is_signed ? 0x80 : 0x00), zero(m.zero_point + (m.is_signed ? 128 : 0)) {}
    std::int16_t operator()(std::uint8_t byte) const {
        return static_cast<std::int16_t>((byte ^ flip) - zero);
    }
};

// Rows [first, first + rows) of `m`'s matrix b minus its zero point, `columns` of them, as A
// rows `stride` int16 apart.
void centered_rows(const QuantizedMatrices& m, std::size_t b, std::size_t first, std::size_t rows,
                   std::size_t columns, std::size_t stride, std::int16_t* out) {
    const auto* matrix = static_cast<const std::uint8_t*>(m.data) + m.layout.offsets[b];
    const Centering center(m);
    for (std::size_t r = 0; r < rows; ++r) {
        const std::uint8_t* row = matrix + (first + r) * m.layout.row_stride;
        std::int16_t* target = out + r * stride;
        for (std::size_t c = 0; c < columns; ++c) {
            target[c] = center(row[c]);
        }
        std::fill(target + columns, target + stride, std::int16_t{0});
    }
}

// `m`'s matrix b [rows, columns] minus its zero point as B: its rows the depth (Transposed:
// its columns the depth, as k for q @ k^T). A pair of depths of one column is one 32-bit word.
template <bool Transposed>
void centered_pairs(const QuantizedMatrices& m, std::size_t b, std::size_t rows,
                    std::size_t columns, std::size_t padded_n, std::int16_t* out) {
    const auto* matrix = static_cast<const std::uint8_t*>(m.data) + m.layout.offsets[b];
    const Centering center(m);
    const std::size_t depth = Transposed ? columns : rows;
    std::fill(out, out + round_up(depth, 2) * padded_n, std::int16_t{0});
    if (Transposed) {  // row r's depths 2p and 2p + 1 go to word (p, r)
        for (std::size_t r = 0; r < rows; ++r) {
            const std::uint8_t* row = matrix + r * m.layout.row_stride;
            for (std::size_t c = 0; c < columns; ++c) {
                out[(c / 2 * padded_n + r) * 2 + c % 2] = center(row[c]);
            }
        }
        return;
    }
    for (std::size_t r = 0; r < rows; r += 2) {  // rows 2p and 2p + 1 interleaved
        const std::uint8_t* even = matrix + r * m.layout.row_stride;
        const std::uint8_t* odd = r + 1 < rows ? even + m.layout.row_stride : nullptr;
        std::int16_t* target = out + r / 2 * padded_n * 2;
        for (std::size_t c = 0; c < columns; ++c) {
            target[2 * c] = center(even[c]);
            target[2 * c + 1] = odd != nullptr ? center(odd[c]) : std::int16_t{0};
        }
    }
}

// c[i, j] = sum_k a[i, k] b(k, j) over `pairs` pairs of depths, j < padded_n.
void pair_dots_portable(const std::int16_t* a, std::size_t a_stride, std::size_t rows,
                        const std::int16_t* b, std::size_t pairs, std::size_t padded_n,
                        std::int32_t* c, std::size_t c_stride) {
    for (std::size_t i = 0; i < rows; ++i) {
        auto* sums = reinterpret_cast<std::uint32_t*>(c + i * c_stride);
        std::fill(sums, sums + padded_n, 0u);
        for (std::size_t k = 0; k < pairs; ++k) {
            const std::int32_t first = a[i * a_stride + 2 * k];
            const std::int32_t second = a[i * a_stride + 2 * k + 1];
            const std::int16_t* pair = b + k * padded_n * 2;
            for (std::size_t j = 0; j < padded_n; ++j) {
                sums[j] +=
                    static_cast<std::uint32_t>(first * pair[2 * j] + second * pair[2 * j + 1]);
            }
        }
    }
}

#ifdef NIMBUS_X86_KERNELS
constexpr std::size_t kPairRows = 6;  // 12 accumulators, 2 vectors of B, one broadcast

template <std::size_t Rows>
__attribute__((target("avx2"))) void pair_block_avx2(const std::int16_t* a, std::size_t a_stride,
                                                     const std::int16_t* b, std::size_t pairs,
                                                     std::size_t padded_n, std::int32_t* c,
                                                     std::size_t c_stride) {
    __m256i acc[Rows][2];
    for (std::size_t r = 0; r < Rows; ++r) {
        acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    }
    for (std::size_t k = 0; k < pairs; ++k) {
        const std::int16_t* pair = b + k * padded_n * 2;
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair + 16));
#pragma GCC unroll 6
        for (std::size_t r = 0; r < Rows; ++r) {
            std::int32_t two;
            std::memcpy(&two, a + r * a_stride + 2 * k, sizeof(two));
            const __m256i x = _mm256_set1_epi32(two);
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x, b0));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x, b1));
        }
    }
    for (std::size_t r = 0; r < Rows; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * c_stride), acc[r][0]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * c_stride + 8), acc[r][1]);
    }
}

using PairBlock = void (*)(const std::int16_t*, std::size_t, const std::int16_t*, std::size_t,
                           std::size_t, std::int32_t*, std::size_t);
constexpr PairBlock kPairBlocks[kPairRows] = {pair_block_avx2<1>, pair_block_avx2<2>,
                                              pair_block_avx2<3>, pair_block_avx2<4>,
                                              pair_block_avx2<5>, pair_block_avx2<6>};

// pair_dots_portable in blocks of up to 6 rows x 16 columns (padded_n a multiple of 16).
void pair_dots_avx2(const std::int16_t* a, std::size_t a_stride, std::size_t rows,
                    const std::int16_t* b, std::size_t pairs, std::size_t padded_n,
                    std::int32_t* c, std::size_t c_stride) {
    constexpr std::size_t kColumns = 16;
    for (std::size_t j = 0; j < padded_n; j += kColumns) {
        for (std::size_t i = 0; i < rows; i += kPairRows) {
            kPairBlocks[std::min(kPairRows, rows - i) - 1](a + i * a_stride, a_stride, b + j * 2,
                                                           pairs, padded_n, c + i * c_stride + j,
                                                           c_stride);
        }
    }
}
#endif

// softmax_codes (qattention.h) in steps that vectorize: rint as (x + 1.5 * 2^23) - 1.5 * 2^23
// (half to even, as numpy's rint, for |x| < 2^22), 2^n from its exponent bits (n >= -25).
__attribute__((always_inline)) inline std::uint32_t plain_codes(const float* x, std::size_t n,
                                                                float peak, std::uint8_t* codes) {
    using namespace polynomials;
    constexpr float kRound = 12582912.0f;
    std::uint32_t sum = 0;
    for (std::size_t j = 0; j < n; ++j) {
        const float t = x[j] - peak;
        const float u = (t < kCodeFloor ? kCodeFloor : t) * kLog2e;
        const float power = (u + kRound) - kRound;
        const float f = u - power;
        float p = kCode[0];
        for (std::size_t c = 1; c < std::size(kCode); ++c) {
            p = p * f + kCode[c];
        }
        const auto exponent = static_cast<std::uint32_t>(static_cast<std::int32_t>(power) + 127)
                              << 23;
        float scale;
        std::memcpy(&scale, &exponent, sizeof(scale));
        const auto code =
            static_cast<std::uint8_t>(static_cast<std::int32_t>((p * scale + kRound) - kRound));
        codes[j] = code;
        sum += code;
    }
    return sum;
}

#ifdef NIMBUS_X86_KERNELS
// plain_codes 8 at a time (GCC left the loop scalar): the same float32 steps, 2^n from its
// exponent bits, vcvtps2dq rounding half to even.
__attribute__((target("avx2"))) std::uint32_t plain_codes_avx2(const float* x, std::size_t n,
                                                               float peak, std::uint8_t* codes) {
    using namespace polynomials;
    constexpr std::size_t kLanes = 8;
    const __m256 shift = _mm256_set1_ps(peak);
    __m256i sums = _mm256_setzero_si256();
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        const __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + j), shift);
        const __m256 u =
            _mm256_mul_ps(_mm256_max_ps(t, _mm256_set1_ps(kCodeFloor)), _mm256_set1_ps(kLog2e));
        const __m256 power = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 f = _mm256_sub_ps(u, power);
        __m256 p = _mm256_set1_ps(kCode[0]);
        for (std::size_t c = 1; c < std::size(kCode); ++c) {
            p = _mm256_add_ps(_mm256_mul_ps(p, f), _mm256_set1_ps(kCode[c]));
        }
        const __m256i exponent = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(power), _mm256_set1_epi32(127)), 23);
        const __m256i values =
            _mm256_cvtps_epi32(_mm256_mul_ps(p, _mm256_castsi256_ps(exponent)));
        sums = _mm256_add_epi32(sums, values);
        // 8 int32 in [0, 255] -> 8 bytes: packed within each 128-bit lane, then the two lanes'
        // first 4 bytes side by side.
        const __m256i words = _mm256_packus_epi32(values, values);
        const __m256i bytes = _mm256_packus_epi16(words, words);
        const __m256i together = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + j), _mm256_castsi256_si128(together));
    }
    std::int32_t lanes[kLanes];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), sums);
    std::uint32_t sum = plain_codes(x + j, n - j, peak, codes + j);
    for (const std::int32_t lane : lanes) {
        sum += static_cast<std::uint32_t>(lane);
    }
    return sum;
}
#endif

// Asks the caches for `rows` rows of `length` bytes, `stride` apart.
void prefetch_rows(const std::uint8_t* x, std::size_t stride, std::size_t rows,
                   std::size_t length) {
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < length; c += kCacheLineBytes) {
            __builtin_prefetch(x + r * stride + c);
        }
    }
}

// One participant's scratch, each part on its own cache lines. The VNNI path packs k, v and q
// as bytes; the others center them as int16 (plain_*).
struct Scratch {
    std::int8_t* keys;           // VNNI: k' packed [strips of s][d groups][kAttentionStrip][4]
    std::int32_t* key_terms;     // VNNI: per row of k, the sum of k', then -zq' times that
    std::int8_t* values;         // VNNI: v' packed [strips of dv][s groups][kAttentionStrip][4]
    std::uint8_t* queries;       // VNNI: the item's q' rows, depth padded to whole groups
    std::int16_t* plain_keys;    // (k - zk)^T as B pairs [d / 2][padded_s][2]
    std::int16_t* plain_values;  // v - zv as B pairs [s / 2][padded_dv][2]
    std::int16_t* plain_queries; // [query_block, d rounded up to even] q - zq
    std::int16_t* plain_codes;   // [query_block, s rounded up to even] the codes
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
    return plain_codes(x, n, peak, codes);
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
    const bool avx2 = vector_isa(isa) == Isa::avx2;
    const auto codes_of =
        vnni ? softmax_codes_avx512 : avx2 ? plain_codes_avx2 : softmax_codes_portable;
    const auto pair_dots_of = avx2 ? pair_dots_avx2 : pair_dots_portable;
#else
    constexpr bool vnni = false;
    const auto codes_of = softmax_codes_portable;
    const auto pair_dots_of = pair_dots_portable;
#endif
    const AttentionItems items(batch, l, s, threads);
    const std::size_t query_block = items.query_block;
    const std::size_t count = items.threads;
    const std::size_t d_groups = ceil_div(d, kGroup);
    const std::size_t s_groups = ceil_div(s, kGroup);
    const std::size_t padded_s = round_up(s, kAttentionStrip);
    const std::size_t padded_dv = round_up(dv, kAttentionStrip);
    const std::size_t codes_stride = s_groups * kGroup;
    const std::size_t plain_d = vnni ? 0 : round_up(d, 2);
    const std::size_t plain_s = vnni ? 0 : round_up(s, 2);
    const std::size_t vnni_parts = vnni ? 1 : 0;  // the packed parts are the VNNI path's
    // Byte sizes of the scratch parts, in Scratch's order, each on whole cache lines.
    const std::size_t part_bytes[] = {
        vnni_parts * padded_s * d_groups * kGroup,
        vnni_parts * padded_s * sizeof(std::int32_t),
        vnni_parts * padded_dv * s_groups * kGroup,
        vnni_parts * query_block * d_groups * kGroup,
        plain_d * padded_s * sizeof(std::int16_t),
        plain_s * padded_dv * sizeof(std::int16_t),
        query_block * plain_d * sizeof(std::int16_t),
        query_block * plain_s * sizeof(std::int16_t),
        query_block * padded_s * sizeof(std::int32_t),
        query_block * codes_stride,
        query_block * padded_dv * sizeof(std::int32_t),
        query_block * sizeof(std::uint32_t),
        query_block * sizeof(std::uint32_t),
        query_block * sizeof(float)};
    std::size_t slot_bytes = 0;
    for (const std::size_t bytes : part_bytes) {
        slot_bytes += whole_lines<std::uint8_t>(bytes);
    }
    const CacheLineArray<std::uint8_t> memory = cache_line_array<std::uint8_t>(count * slot_bytes);
    std::vector<Scratch> scratch(count);
    for (std::size_t p = 0; p < count; ++p) {
        std::uint8_t* part = memory.get() + p * slot_bytes;
        std::size_t index = 0;
        const auto next = [&](auto* pointer) {
            using Pointer = decltype(pointer);
            auto* start = reinterpret_cast<Pointer>(part);
            part += whole_lines<std::uint8_t>(part_bytes[index++]);
            return start;
        };
        Scratch& own = scratch[p];
        own.keys = next(own.keys);
        own.key_terms = next(own.key_terms);
        own.values = next(own.values);
        own.queries = next(own.queries);
        own.plain_keys = next(own.plain_keys);
        own.plain_values = next(own.plain_values);
        own.plain_queries = next(own.plain_queries);
        own.plain_codes = next(own.plain_codes);
        own.scores = next(own.scores);
        own.codes = next(own.codes);
        own.outputs = next(own.outputs);
        own.query_sums = next(own.query_sums);
        own.code_sums = next(own.code_sums);
        own.factors = next(own.factors);
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
    parallel_items(items.count, count, [&](std::size_t participant, std::size_t item) {
        const Scratch& own = scratch[participant];
        const auto [b, first, rows] = items[item];
        float* const scores = reinterpret_cast<float*>(own.scores);
#ifdef NIMBUS_X86_KERNELS
        if (vnni) {
            if (packed[participant] != b) {
                pack_keys_avx512_vnni(
                    static_cast<const std::uint8_t*>(k.data) + k.layout.offsets[b],
                    k.layout.row_stride, s, d, !k.is_signed, own.keys, own.key_terms);
                // The columns' part of the zero-point terms: -zq' sum k'.
                for (std::size_t j = 0; j < s; ++j) {
                    own.key_terms[j] = static_cast<std::int32_t>(
                        0u - q_zero * static_cast<std::uint32_t>(own.key_terms[j]));
                }
                pack_values_avx512_vnni(
                    static_cast<const std::uint8_t*>(v.data) + v.layout.offsets[b],
                    v.layout.row_stride, s, dv, !v.is_signed, own.values);
                packed[participant] = b;
                // The next matrix of the participant's run: its rows, which packing it would
                // otherwise wait for one cache miss at a time.
                const std::size_t ahead = std::min(batch - 1, b + 1);
                for (const QuantizedMatrices* m : {&q, &k, &v}) {
                    const std::size_t rows_of = m == &q ? l : s;
                    prefetch_rows(
                        static_cast<const std::uint8_t*>(m->data) + m->layout.offsets[ahead],
                        m->layout.row_stride, rows_of, m == &v ? dv : d);
                }
            }
            const std::size_t q_stride = d_groups * kGroup;
            for (std::size_t i = 0; i < rows; ++i) {
                own.query_sums[i] = copy_queries_avx512_vnni(
                    q_bytes + q.layout.offsets[b] + (first + i) * q.layout.row_stride, d,
                    q.is_signed, own.queries + i * q_stride, q_stride);
            }
            dot_strips_avx512_vnni(own.queries, q_stride, rows, own.keys, d_groups,
                                   padded_s / kAttentionStrip, own.scores, padded_s);
            for (std::size_t i = 0; i < rows; ++i) {
                // The row's part: d zq' zk' - zk' sum q'.
                scores_to_float_avx512_vnni(
                    own.scores + i * padded_s,
                    reinterpret_cast<const std::uint32_t*>(own.key_terms),
                    both_zeros - k_zero * own.query_sums[i], s);
            }
        } else
#endif
        {
            if (packed[participant] != b) {
                centered_pairs<true>(k, b, s, d, padded_s, own.plain_keys);
                centered_pairs<false>(v, b, s, dv, padded_dv, own.plain_values);
                packed[participant] = b;
            }
            centered_rows(q, b, first, rows, d, plain_d, own.plain_queries);
            pair_dots_of(own.plain_queries, plain_d, rows, own.plain_keys, plain_d / 2, padded_s,
                         own.scores, padded_s);
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
                own.factors[i] =
                    peak == -kInfinity ? 0.0f : std::numeric_limits<float>::quiet_NaN();
            } else {
                own.code_sums[i] = codes_of(row, s, peak, codes);
                own.factors[i] = value_scale / static_cast<float>(own.code_sums[i]);
            }
        }
        std::uint32_t value_zero = v_zero;
#ifdef NIMBUS_X86_KERNELS
        if (vnni) {
            dot_strips_avx512_vnni(own.codes, codes_stride, rows, own.values, s_groups,
                                   padded_dv / kAttentionStrip, own.outputs, padded_dv);
        } else
#endif
        {
            for (std::size_t i = 0; i < rows; ++i) {
                std::copy(own.codes + i * codes_stride, own.codes + i * codes_stride + s,
                          own.plain_codes + i * plain_s);
                std::fill(own.plain_codes + i * plain_s + s, own.plain_codes + (i + 1) * plain_s,
                          std::int16_t{0});
            }
            pair_dots_of(own.plain_codes, plain_s, rows, own.plain_values, plain_s / 2, padded_dv,
                         own.outputs, padded_dv);
            value_zero = 0;  // v was centered
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
