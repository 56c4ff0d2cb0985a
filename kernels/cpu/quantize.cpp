// Quantize and dequantize, split into chunks over the worker pool. The AVX-512 and AVX2 paths
// (chosen by selected_isa(), like the GEMMs) do 16 or 8 elements per step; the portable path
// is plain C++. All three compute the reference's float32 steps in its order: an IEEE division,
// round half to even, + zero point, clamp; so they agree bit for bit.
#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "layout.h"
#include "worker_pool.h"

#ifdef NIMBUS_X86_KERNELS
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define NIMBUS_AVX512 __attribute__((target("avx512f,avx512bw")))
#define NIMBUS_AVX2 __attribute__((target("avx2")))
#endif

namespace nimbus::kernels {
namespace {

// Elements per work item: large enough that the pool's hand-off is noise, small enough that
// both threads get several items from a BERT-sized activation.
constexpr std::size_t kChunk = 16384;

struct Range {
    float scale, zero_point, lo, hi;
};

// One element, as the reference computes it (NaN gives 0, as numpy's cast does here).
template <typename Result>
Result quantize_one(float x, const Range& r) {
    const float q = std::nearbyint(x / r.scale) + r.zero_point;
    if (std::isnan(q)) {
        return 0;
    }
    return static_cast<Result>(std::min(std::max(q, r.lo), r.hi));
}

template <typename Result>
void quantize_portable(const float* x, std::size_t begin, std::size_t end, const Range& r,
                       Result* out) {
    for (std::size_t i = begin; i < end; ++i) {
        out[i] = quantize_one<Result>(x[i], r);
    }
}

#ifdef NIMBUS_X86_KERNELS
// Range in zmm registers.
struct Range512 {
    __m512 scale, zero_point, lo, hi;
};

NIMBUS_AVX512 inline Range512 range512(const Range& r) {
    return {_mm512_set1_ps(r.scale), _mm512_set1_ps(r.zero_point), _mm512_set1_ps(r.lo),
            _mm512_set1_ps(r.hi)};
}

// 16 quantized values as int32 lanes.
NIMBUS_AVX512 inline __m512i quantize_lanes(const float* x, const Range512& r) {
    const __m512 q = _mm512_add_ps(
        _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x), r.scale),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
        r.zero_point);
    // max/min return their second operand for NaN, so NaN becomes lo here: fixed after.
    const __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, r.lo), r.hi));
    return _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(q, q, _CMP_ORD_Q), v);
}

template <typename Result>
NIMBUS_AVX512 void quantize_avx512(const float* x, std::size_t begin, std::size_t end,
                                   const Range& r, Result* out) {
    const Range512 range = range512(r);
    std::size_t i = begin;
    for (; i + 16 <= end; i += 16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm512_cvtepi32_epi8(quantize_lanes(x + i, range)));
    }
    quantize_portable(x, i, end, r, out);
}

// Pixels [begin, end) of three planes (an RGB image, `pixels` apart) into NHWC bytes, 16 pixels
// at a time: each pixel's three bytes are put together in one int32 lane, then the lanes'
// fourth bytes are squeezed out. Through planar rows and a scalar interleave, ResNet's input at
// batch 8 took 0.16 ms on two threads, 3.5 times the quantization alone.
template <typename Result>
NIMBUS_AVX512 void quantize_rgb_avx512(const float* x, std::size_t pixels, std::size_t begin,
                                       std::size_t end, const Range& r, Result* out) {
    const Range512 range = range512(r);
    const __m512i low_byte = _mm512_set1_epi32(0xff);
    // Within each 128-bit lane, bytes 0-2 of its four int32 lanes, then four zero bytes ...
    const __m512i three_of_four = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
    // ... and the four lanes' 12 bytes one after another: 48 bytes.
    const __m512i packed_lanes =
        _mm512_setr_epi32(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 3, 7, 11, 15);
    constexpr __mmask64 k48Bytes = (__mmask64{1} << 48) - 1;
    std::size_t p = begin;
    for (; p + 16 <= end; p += 16) {
        __m512i rgb = _mm512_and_si512(quantize_lanes(x + p, range), low_byte);
        for (std::size_t c = 1; c < 3; ++c) {
            const __m512i channel =
                _mm512_and_si512(quantize_lanes(x + c * pixels + p, range), low_byte);
            rgb = _mm512_or_si512(rgb, _mm512_sll_epi32(channel, _mm_cvtsi32_si128(8 * c)));
        }
        rgb = _mm512_permutexvar_epi32(packed_lanes, _mm512_shuffle_epi8(rgb, three_of_four));
        _mm512_mask_storeu_epi8(out + 3 * p, k48Bytes, rgb);
    }
    for (; p < end; ++p) {
        for (std::size_t c = 0; c < 3; ++c) {
            out[3 * p + c] = quantize_one<Result>(x[c * pixels + p], r);
        }
    }
}

template <typename Result>
NIMBUS_AVX2 void quantize_avx2(const float* x, std::size_t begin, std::size_t end,
                               const Range& r, Result* out) {
    const __m256 scale = _mm256_set1_ps(r.scale);
    const __m256 zero_point = _mm256_set1_ps(r.zero_point);
    const __m256 lo = _mm256_set1_ps(r.lo);
    const __m256 hi = _mm256_set1_ps(r.hi);
    std::size_t i = begin;
    for (; i + 8 <= end; i += 8) {
        const __m256 q = _mm256_add_ps(
            _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), scale),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
            zero_point);
        const __m256 ordered = _mm256_cmp_ps(q, q, _CMP_ORD_Q);
        const __m256 clamped = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(q, lo), hi), ordered);
        const __m256i v = _mm256_cvtps_epi32(clamped);  // in [-128, 255]: packs below are exact
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v),
                                              _mm256_extracti128_si256(v, 1));
        const __m128i bytes = Result(-1) < 0 ? _mm_packs_epi16(words, words)
                                             : _mm_packus_epi16(words, words);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), bytes);
    }
    quantize_portable(x, i, end, r, out);
}
#endif

template <typename Result>
void quantize_range(const float* x, std::size_t begin, std::size_t end, const Range& r,
                    Result* out) {
#ifdef NIMBUS_X86_KERNELS
    switch (vector_isa(selected_isa())) {
        case Isa::avx512_vnni:
            return quantize_avx512(x, begin, end, r, out);
        case Isa::avx2:
            return quantize_avx2(x, begin, end, r, out);
        default:  // portable: vector_isa never names an AMX path
            break;
    }
#endif
    quantize_portable(x, begin, end, r, out);
}

// (q - zero_point) * scale: one exact conversion and one rounding, which compilers vectorize,
// so any ISA gives the same bits. Always inlined, so that the AVX-512 wrappers below compile the
// loops with 16 lanes and vpmovsxbd; at the baseline ISA the per-channel form ran at 2 cycles per
// element (57 us for a BERT-base activation of 128 tokens).
template <typename Input>
[[gnu::always_inline]] inline void dequantize_range(const Input* q, std::size_t begin,
                                                    std::size_t end, float scale,
                                                    std::int32_t zero_point, float* out) {
    for (std::size_t i = begin; i < end; ++i) {
        out[i] = static_cast<float>(static_cast<std::int32_t>(q[i]) - zero_point) * scale;
    }
}

template <typename Input>
[[gnu::always_inline]] inline void dequantize_rows(const Input* q, std::size_t begin,
                                                   std::size_t end, std::size_t channels,
                                                   const float* scales,
                                                   const std::int32_t* zero_points, float* out) {
    // The result shares no memory with the inputs (the bindings allocate it); said so, the
    // compiler vectorizes the loop without checks for overlap.
    const float* __restrict row_scales = scales;
    const std::int32_t* __restrict row_zero_points = zero_points;
    for (std::size_t row = begin; row < end; ++row) {
        const Input* __restrict source = q + row * channels;
        float* __restrict target = out + row * channels;
        for (std::size_t c = 0; c < channels; ++c) {
            target[c] =
                static_cast<float>(static_cast<std::int32_t>(source[c]) - row_zero_points[c]) *
                row_scales[c];
        }
    }
}

#ifdef NIMBUS_X86_KERNELS
template <typename Input>
NIMBUS_AVX512 void dequantize_range_avx512(const Input* q, std::size_t begin, std::size_t end,
                                           float scale, std::int32_t zero_point, float* out) {
    dequantize_range(q, begin, end, scale, zero_point, out);
}

template <typename Input>
NIMBUS_AVX512 void dequantize_rows_avx512(const Input* q, std::size_t begin, std::size_t end,
                                          std::size_t channels, const float* scales,
                                          const std::int32_t* zero_points, float* out) {
    dequantize_rows(q, begin, end, channels, scales, zero_points, out);
}
#endif

// dequantize_range or dequantize_rows (`Rows`) on the selected path.
template <bool Rows, typename Input, typename... Args>
void dequantize_on_path(const Input* q, Args... args) {
#ifdef NIMBUS_X86_KERNELS
    if (vector_isa(selected_isa()) == Isa::avx512_vnni) {
        if constexpr (Rows) {
            return dequantize_rows_avx512(q, args...);
        } else {
            return dequantize_range_avx512(q, args...);
        }
    }
#endif
    if constexpr (Rows) {
        dequantize_rows(q, args...);
    } else {
        dequantize_range(q, args...);
    }
}

template <typename Work>
void over_chunks(std::size_t count, std::size_t threads, const Work& work) {
    parallel_for((count + kChunk - 1) / kChunk, threads, [&](std::size_t chunk) {
        work(chunk * kChunk, std::min(count, (chunk + 1) * kChunk));
    });
}

Range range_of(float scale, std::int32_t zero_point, bool unsigned_result) {
    return {scale, static_cast<float>(zero_point), unsigned_result ? 0.0f : -128.0f,
            unsigned_result ? 255.0f : 127.0f};
}

// Pixels per work item of the channels-last quantize: each channel's run is quantized with the
// vector code into a scratch row, then the rows are interleaved into NHWC order.
constexpr std::size_t kPixelBlock = 512;

template <typename Result>
void quantize_block_to_channels_last(const float* x, std::size_t channels, std::size_t pixels,
                                     std::size_t begin, std::size_t end, const Range& range,
                                     Result* out) {
#ifdef NIMBUS_X86_KERNELS
    if (channels == 3 && vector_isa(selected_isa()) == Isa::avx512_vnni) {
        quantize_rgb_avx512(x, pixels, begin, end, range, out);
        return;
    }
#endif
    const std::size_t count = end - begin;
    std::vector<Result> rows(channels * count);
    for (std::size_t c = 0; c < channels; ++c) {
        quantize_range(x + c * pixels + begin, 0, count, range, rows.data() + c * count);
    }
    interleave_planes(rows.data(), count, channels, count, out + begin * channels);
}

}  // namespace

void quantize(const float* x, std::size_t count, float scale, std::int32_t zero_point,
              bool unsigned_result, void* out, std::size_t threads) {
    const Range range = range_of(scale, zero_point, unsigned_result);
    over_chunks(count, threads, [&](std::size_t begin, std::size_t end) {
        if (unsigned_result) {
            quantize_range(x, begin, end, range, static_cast<std::uint8_t*>(out));
        } else {
            quantize_range(x, begin, end, range, static_cast<std::int8_t*>(out));
        }
    });
}

void quantize_rows(const float* x, std::size_t rows, std::size_t count, std::size_t x_stride,
                   float scale, std::int32_t zero_point, bool unsigned_result, void* out,
                   std::size_t out_stride) {
    const Range range = range_of(scale, zero_point, unsigned_result);
    for (std::size_t row = 0; row < rows; ++row) {
        if (unsigned_result) {
            quantize_range(x + row * x_stride, 0, count, range,
                           static_cast<std::uint8_t*>(out) + row * out_stride);
        } else {
            quantize_range(x + row * x_stride, 0, count, range,
                           static_cast<std::int8_t*>(out) + row * out_stride);
        }
    }
}

void quantize_to_channels_last(const float* x, std::size_t batch, std::size_t channels,
                               std::size_t pixels, float scale, std::int32_t zero_point,
                               bool unsigned_result, void* out, std::size_t threads) {
    const Range range = range_of(scale, zero_point, unsigned_result);
    const std::size_t blocks = (pixels + kPixelBlock - 1) / kPixelBlock;
    parallel_for(batch * blocks, threads, [&](std::size_t item) {
        const std::size_t image = item / blocks;
        const std::size_t begin = item % blocks * kPixelBlock;
        const std::size_t end = std::min(pixels, begin + kPixelBlock);
        const float* plane = x + image * channels * pixels;
        const std::size_t offset = image * pixels * channels;
        if (unsigned_result) {
            quantize_block_to_channels_last(plane, channels, pixels, begin, end, range,
                                            static_cast<std::uint8_t*>(out) + offset);
        } else {
            quantize_block_to_channels_last(plane, channels, pixels, begin, end, range,
                                            static_cast<std::int8_t*>(out) + offset);
        }
    });
}

void dequantize(const void* q, bool unsigned_input, std::size_t count, float scale,
                std::int32_t zero_point, float* out, std::size_t threads) {
    over_chunks(count, threads, [&](std::size_t begin, std::size_t end) {
        if (unsigned_input) {
            dequantize_on_path<false>(static_cast<const std::uint8_t*>(q), begin, end, scale,
                                      zero_point, out);
        } else {
            dequantize_on_path<false>(static_cast<const std::int8_t*>(q), begin, end, scale,
                                      zero_point, out);
        }
    });
}

void dequantize_channels(const void* q, bool unsigned_input, std::size_t rows,
                         std::size_t channels, const float* scales,
                         const std::int32_t* zero_points, float* out, std::size_t threads) {
    // Whole rows per work item, about kChunk elements each.
    const std::size_t rows_per_item = std::max<std::size_t>(kChunk / std::max<std::size_t>(channels, 1), 1);
    parallel_for((rows + rows_per_item - 1) / rows_per_item, threads, [&](std::size_t item) {
        const std::size_t begin = item * rows_per_item;
        const std::size_t end = std::min(rows, begin + rows_per_item);
        if (unsigned_input) {
            dequantize_on_path<true>(static_cast<const std::uint8_t*>(q), begin, end, channels,
                                     scales, zero_points, out);
        } else {
            dequantize_on_path<true>(static_cast<const std::int8_t*>(q), begin, end, channels,
                                     scales, zero_points, out);
        }
    });
}

}  // namespace nimbus::kernels
