// The AVX512-VNNI path of the integer attention (qattention.h): operands packed in strips of 32
// columns, products of up to 6 rows x 32 columns in 12 zmm accumulators (vpdpbusd: 4 u8 x 4 s8
// per int32 lane, exact), and the softmax codes 16 at a time.
//
// Only functions marked NIMBUS_AVX512_VNNI use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "qattention.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "attention_paths.h"
#include "vector_math_polynomials.h"

#define NIMBUS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kGroup = kQAttentionGroup;
constexpr std::size_t kLanes = 16;
constexpr std::size_t kStripVectors = kAttentionStrip / kLanes;
constexpr std::size_t kGroupBytes = kAttentionStrip * kGroup;  // one group of a strip
constexpr std::size_t kRowBlock = 6;  // 12 accumulators cover vpdpbusd's latency on two ports

// `count` bytes from `source` (the rest 0), each xor `flip`, as one int32 lane.
inline std::uint32_t group_of(const std::uint8_t* source, std::size_t count, std::uint8_t flip) {
    std::uint8_t bytes[kGroup];
    for (std::size_t i = 0; i < kGroup; ++i) {
        bytes[i] = i < count ? source[i] ^ flip : 0;
    }
    std::uint32_t word;
    std::memcpy(&word, bytes, sizeof(word));
    return word;
}

template <std::size_t Rows>
NIMBUS_AVX512_VNNI void dot_block(const std::uint8_t* a, std::size_t row_stride,
                                  const std::int8_t* strip, std::size_t groups, std::int32_t* c,
                                  std::size_t c_stride) {
    __m512i acc[Rows][kStripVectors];
    for (std::size_t r = 0; r < Rows; ++r) {
        for (std::size_t vector = 0; vector < kStripVectors; ++vector) {
            acc[r][vector] = _mm512_setzero_si512();
        }
    }
    for (std::size_t group = 0; group < groups; ++group) {
        const std::int8_t* weights = strip + group * kGroupBytes;
        const __m512i w0 = _mm512_loadu_si512(weights);
        const __m512i w1 = _mm512_loadu_si512(weights + kLanes * kGroup);
#pragma GCC unroll 6
        for (std::size_t r = 0; r < Rows; ++r) {
            std::int32_t four;
            std::memcpy(&four, a + r * row_stride + group * kGroup, kGroup);
            const __m512i x = _mm512_set1_epi32(four);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], x, w0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], x, w1);
        }
    }
    for (std::size_t r = 0; r < Rows; ++r) {
        for (std::size_t vector = 0; vector < kStripVectors; ++vector) {
            _mm512_storeu_si512(c + r * c_stride + vector * kLanes, acc[r][vector]);
        }
    }
}

using DotBlock = void (*)(const std::uint8_t*, std::size_t, const std::int8_t*, std::size_t,
                          std::int32_t*, std::size_t);
constexpr DotBlock kDotBlocks[kRowBlock] = {dot_block<1>, dot_block<2>, dot_block<3>,
                                            dot_block<4>, dot_block<5>, dot_block<6>};

}  // namespace

NIMBUS_AVX512_VNNI void pack_keys_avx512_vnni(const std::uint8_t* k, std::size_t row_stride,
                                              std::size_t s, std::size_t d, bool flip,
                                              std::int8_t* packed, std::int32_t* column_sums) {
    const std::size_t groups = (d + kGroup - 1) / kGroup;
    const std::size_t strips = (s + kAttentionStrip - 1) / kAttentionStrip;
    // A group of a row is one 32-bit word: k^T's words, as the float attention packs k^T, then
    // flipped; else group by group, flipping only the bytes inside the matrix.
    const bool whole_words = d % kGroup == 0 && row_stride % kGroup == 0;
    const std::uint8_t mask = flip ? 0x80 : 0x00;
    if (whole_words) {
        pack_transposed_words_avx512(k, row_stride / kGroup, s, groups, packed);
    } else {
        for (std::size_t j = 0; j < s; ++j) {
            std::int8_t* column = packed + j / kAttentionStrip * groups * kGroupBytes +
                                  j % kAttentionStrip * kGroup;
            for (std::size_t group = 0; group < groups; ++group) {
                const std::uint32_t word = group_of(k + j * row_stride + group * kGroup,
                                                    std::min(kGroup, d - group * kGroup), mask);
                std::memcpy(column + group * kGroupBytes, &word, sizeof(word));
            }
        }
    }
    // Sum each column (vpdpbusd with 1s). Columns past s hold whatever was there: their scores
    // are never read.
    const __m512i flips = _mm512_set1_epi8(static_cast<char>(whole_words ? mask : 0));
    const __m512i ones = _mm512_set1_epi8(1);
    for (std::size_t strip = 0; strip < strips; ++strip) {
        __m512i sums[kStripVectors] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        for (std::size_t group = 0; group < groups; ++group) {
            std::int8_t* words = packed + (strip * groups + group) * kGroupBytes;
            for (std::size_t vector = 0; vector < kStripVectors; ++vector) {
                const __m512i flipped =
                    _mm512_xor_si512(_mm512_loadu_si512(words + vector * 64), flips);
                _mm512_storeu_si512(words + vector * 64, flipped);
                sums[vector] = _mm512_dpbusd_epi32(sums[vector], ones, flipped);
            }
        }
        for (std::size_t vector = 0; vector < kStripVectors; ++vector) {
            _mm512_storeu_si512(column_sums + strip * kAttentionStrip + vector * kLanes,
                                sums[vector]);
        }
    }
}

void pack_values_avx512_vnni(const std::uint8_t* v, std::size_t row_stride, std::size_t s,
                             std::size_t dv, bool flip, std::int8_t* packed) {
    const std::size_t groups = (s + kGroup - 1) / kGroup;
    const std::uint8_t mask = flip ? 0x80 : 0x00;
    const __m128i flips = _mm_set1_epi8(static_cast<char>(mask));
    const __m128i zero = _mm_setzero_si128();
    constexpr std::size_t kBlock = 16;  // columns interleaved at once (SSE2)
    for (std::size_t group = 0; group < groups; ++group) {
        const std::size_t first = group * kGroup;
        const std::size_t count = std::min(kGroup, s - first);
        std::size_t c = 0;
        // 4 rows of 16 columns -> 16 columns of 4 bytes: bytes of row pairs interleaved, then
        // their 16-bit pairs.
        for (; c + kBlock <= dv; c += kBlock) {
            __m128i rows[kGroup];
            for (std::size_t i = 0; i < kGroup; ++i) {
                const auto* row =
                    reinterpret_cast<const __m128i*>(v + (first + i) * row_stride + c);
                rows[i] = i < count ? _mm_xor_si128(_mm_loadu_si128(row), flips) : zero;
            }
            const __m128i low01 = _mm_unpacklo_epi8(rows[0], rows[1]);
            const __m128i high01 = _mm_unpackhi_epi8(rows[0], rows[1]);
            const __m128i low23 = _mm_unpacklo_epi8(rows[2], rows[3]);
            const __m128i high23 = _mm_unpackhi_epi8(rows[2], rows[3]);
            auto* target = reinterpret_cast<__m128i*>(
                packed + c / kAttentionStrip * groups * kGroupBytes + group * kGroupBytes +
                c % kAttentionStrip * kGroup);
            _mm_storeu_si128(target, _mm_unpacklo_epi16(low01, low23));
            _mm_storeu_si128(target + 1, _mm_unpackhi_epi16(low01, low23));
            _mm_storeu_si128(target + 2, _mm_unpacklo_epi16(high01, high23));
            _mm_storeu_si128(target + 3, _mm_unpackhi_epi16(high01, high23));
        }
        // Columns past dv may hold anything: their outputs are never read.
        for (; c < dv; ++c) {
            std::int8_t* target = packed + c / kAttentionStrip * groups * kGroupBytes +
                                  group * kGroupBytes + c % kAttentionStrip * kGroup;
            for (std::size_t i = 0; i < kGroup; ++i) {
                target[i] = static_cast<std::int8_t>(
                    i < count ? v[(first + i) * row_stride + c] ^ mask : 0);
            }
        }
    }
}

NIMBUS_AVX512_VNNI std::uint32_t copy_queries_avx512_vnni(const std::uint8_t* q,
                                                          std::size_t d, bool flip,
                                                          std::uint8_t* row,
                                                          std::size_t padded_d) {
    const __m512i flips = _mm512_set1_epi8(static_cast<char>(flip ? 0x80 : 0x00));
    __m512i sums = _mm512_setzero_si512();
    for (std::size_t depth = 0; depth < padded_d; depth += 64) {
        const std::size_t left = d > depth ? d - depth : 0;
        const __mmask64 lanes = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
        const __m512i bytes = _mm512_maskz_mov_epi8(
            lanes, _mm512_xor_si512(_mm512_maskz_loadu_epi8(lanes, q + depth), flips));
        const std::size_t width = std::min<std::size_t>(64, padded_d - depth);
        _mm512_mask_storeu_epi8(row + depth, width >= 64 ? ~__mmask64{0}
                                                         : (__mmask64{1} << width) - 1, bytes);
        sums = _mm512_add_epi64(sums, _mm512_sad_epu8(bytes, _mm512_setzero_si512()));
    }
    return static_cast<std::uint32_t>(_mm512_reduce_add_epi64(sums));
}

NIMBUS_AVX512_VNNI void scores_to_float_avx512_vnni(std::int32_t* row, const std::uint32_t* terms,
                                                    std::uint32_t row_term, std::size_t n) {
    const __m512i add = _mm512_set1_epi32(static_cast<int>(row_term));
    for (std::size_t j = 0; j < n; j += kLanes) {
        const __mmask16 lanes =
            n - j >= kLanes ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
        const __m512i total = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_maskz_loadu_epi32(lanes, row + j), add),
            _mm512_maskz_loadu_epi32(lanes, terms + j));
        _mm512_mask_storeu_ps(reinterpret_cast<float*>(row + j), lanes,
                              _mm512_cvtepi32_ps(total));
    }
}

NIMBUS_AVX512_VNNI void outputs_to_float_avx512_vnni(const std::int32_t* sums,
                                                     std::uint32_t zero_term, float factor,
                                                     float* out, std::size_t n) {
    const __m512i subtract = _mm512_set1_epi32(static_cast<int>(zero_term));
    const __m512 scale = _mm512_set1_ps(factor);
    for (std::size_t c = 0; c < n; c += kLanes) {
        const __mmask16 lanes =
            n - c >= kLanes ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
        const __m512i total = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(lanes, sums + c), subtract);
        _mm512_mask_storeu_ps(out + c, lanes, _mm512_mul_ps(_mm512_cvtepi32_ps(total), scale));
    }
}

void dot_strips_avx512_vnni(const std::uint8_t* a, std::size_t row_stride, std::size_t rows,
                            const std::int8_t* packed, std::size_t groups, std::size_t strips,
                            std::int32_t* c, std::size_t c_stride) {
    for (std::size_t strip = 0; strip < strips; ++strip) {
        const std::int8_t* b = packed + strip * groups * kGroupBytes;
        for (std::size_t row = 0; row < rows; row += kRowBlock) {
            const std::size_t count = std::min(kRowBlock, rows - row);
            kDotBlocks[count - 1](a + row * row_stride, row_stride, b, groups,
                                  c + row * c_stride + strip * kAttentionStrip, c_stride);
        }
    }
}

// Two vectors per step: one's chain of dependent operations alone left most of the
// floating-point ports idle.
template <std::size_t Vectors>
NIMBUS_AVX512_VNNI inline void codes_step(const float* x, __m512 shift, std::uint8_t* codes,
                                          __mmask16 last_lanes, __m512i& sums) {
    using namespace polynomials;
    __m512 f[Vectors];
    __m512 power[Vectors];
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        const __mmask16 lanes = v + 1 == Vectors ? last_lanes : __mmask16(0xffff);
        const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x + v * kLanes), shift);
        const __m512 u = _mm512_mul_ps(_mm512_max_ps(t, _mm512_set1_ps(kCodeFloor)),
                                       _mm512_set1_ps(kLog2e));
        power[v] = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        f[v] = _mm512_sub_ps(u, power[v]);
    }
    __m512 p[Vectors];
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        p[v] = _mm512_set1_ps(kCode[0]);
    }
    for (std::size_t c = 1; c < std::size(kCode); ++c) {
#pragma GCC unroll 2
        for (std::size_t v = 0; v < Vectors; ++v) {
            p[v] = _mm512_add_ps(_mm512_mul_ps(p[v], f[v]), _mm512_set1_ps(kCode[c]));
        }
    }
#pragma GCC unroll 2
    for (std::size_t v = 0; v < Vectors; ++v) {
        const __mmask16 lanes = v + 1 == Vectors ? last_lanes : __mmask16(0xffff);
        // vcvtps2dq rounds half to even (the default rounding mode), as rint does.
        const __m512i values =
            _mm512_maskz_cvtps_epi32(lanes, _mm512_scalef_ps(p[v], power[v]));
        _mm512_mask_cvtepi32_storeu_epi8(codes + v * kLanes, lanes, values);
        sums = _mm512_add_epi32(sums, values);
    }
}

NIMBUS_AVX512_VNNI std::uint32_t softmax_codes_avx512(const float* x, std::size_t n, float peak,
                                                      std::uint8_t* codes) {
    const __m512 shift = _mm512_set1_ps(peak);
    __m512i sums = _mm512_setzero_si512();
    std::size_t j = 0;
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
        codes_step<2>(x + j, shift, codes + j, 0xffff, sums);
    }
    for (; j < n; j += kLanes) {
        const __mmask16 lanes =
            n - j >= kLanes ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
        codes_step<1>(x + j, shift, codes + j, lanes, sums);
    }
    return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(sums));
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
