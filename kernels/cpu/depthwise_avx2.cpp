// The AVX2 path of the int8 depthwise convolution: channels in the 8 int32 lanes of a ymm
// register, each tap adding (x - x_zp) * w with vpmulld, exactly as the portable path sums them
// (taps outside the image are skipped; fewer than 8 channels take the portable path). Inside the image, a pass takes kPixels adjacent output
// pixels of a row, which share each load of a tap's weights; pixels whose windows cross the
// left or right edge take the pass alone, over the taps inside. The epilogue is the GEMM's
// (qgemm.h), 8 channels at a time.
//
// Only functions marked NIMBUS_AVX2 use AVX2 (see qgemm_avx512_vnni.cpp).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "depthwise.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#define NIMBUS_AVX2 __attribute__((target("avx2")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 8;
constexpr std::size_t kPixels = 4;

// 8 consecutive elements as int32 lanes.
template <typename Element>
NIMBUS_AVX2 inline __m256i load_widened(const Element* x) {
    const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x));
    return std::is_signed_v<Element> ? _mm256_cvtepi8_epi32(packed) : _mm256_cvtepu8_epi32(packed);
}

// The weights of 8 channels of one tap, stored as the low 16 bits of each int32.
NIMBUS_AVX2 inline __m256i load_weights(const std::int32_t* w) {
    const __m256i low_halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    return _mm256_srai_epi32(_mm256_slli_epi32(low_halves, 16), 16);
}

// Finishes channels [channel, channel + 8) of one pixel (element `index` of the output).
NIMBUS_AVX2 inline void store_channels(const DepthwiseTask& task, std::size_t index,
                                       std::size_t channel, __m256i raw) {
    // The bias and scale are padded to padded_channels, a multiple of 8.
    const __m256i acc = _mm256_add_epi32(
        raw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(task.bias + channel)));
    if (task.type == OutputType::s32) {
        _mm256_storeu_si256(
            reinterpret_cast<__m256i*>(static_cast<std::int32_t*>(task.out) + index), acc);
        return;
    }
    // cvtdq2ps and cvtps2dq round half to even under the default MXCSR, like the reference.
    const __m256 scaled =
        _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(task.scale + channel));
    if (task.type == OutputType::f32) {
        _mm256_storeu_ps(static_cast<float*>(task.out) + index, scaled);
        return;
    }
    // Clamping before rounding equals clamping after it (the bounds are integers).
    const __m256 lo = _mm256_set1_ps(static_cast<float>(task.lo - task.zero_point));
    const __m256 hi = _mm256_set1_ps(static_cast<float>(task.hi - task.zero_point));
    const __m256i q = _mm256_add_epi32(
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(scaled, lo), hi)),
        _mm256_set1_epi32(task.zero_point));
    // Every value is within the output type: the saturating packs only narrow.
    const __m128i words =
        _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i bytes = task.type == OutputType::u8 ? _mm_packus_epi16(words, words)
                                                      : _mm_packs_epi16(words, words);
    _mm_storel_epi64(
        reinterpret_cast<__m128i*>(static_cast<std::uint8_t*>(task.out) + index), bytes);
}

// Output pixels [ow, ow + Pixels) of output row `row` (of N * OH), over kernel rows `rows` and
// kernel columns `cols`, which must lie inside the image for every one of the pixels. Channels
// go 8 at a time; the last 8 overlap the ones before where C is no multiple of 8 (C >= 8).
template <std::size_t Pixels, typename Element>
NIMBUS_AVX2 void compute_pixels(const DepthwiseTask& task, std::size_t row, std::size_t ow,
                                TapRange rows, TapRange cols) {
    const ConvGeometry& g = *task.geometry;
    const std::size_t channels = g.channels;
    const std::size_t image = row / g.out_h;
    const std::size_t top = row % g.out_h * g.stride_h - g.pad_top;  // wraps when padded
    const std::size_t left = ow * g.stride_w - g.pad_left;
    const std::size_t pixel_step = g.stride_w * channels;  // between adjacent output pixels
    const Element* const image_x =
        static_cast<const Element*>(task.x) + image * g.height * g.width * channels;
    const __m256i zero_point = _mm256_set1_epi32(task.x_zero_point);
    for (std::size_t next = 0; next < channels; next += kLanes) {
        const std::size_t channel = std::min(next, channels - kLanes);
        __m256i acc[Pixels];
#pragma GCC unroll 4
        for (std::size_t p = 0; p < Pixels; ++p) {
            acc[p] = _mm256_setzero_si256();
        }
        for (std::size_t ky = rows.begin; ky < rows.end; ++ky) {
            const Element* line = image_x + (top + ky * g.dilation_h) * g.width * channels +
                                  left * channels + channel;
            const std::int32_t* weights =
                task.weights + ky * task.kernel_w * task.padded_channels + channel;
            for (std::size_t kx = cols.begin; kx < cols.end; ++kx) {
                const __m256i w = load_weights(weights + kx * task.padded_channels);
                const Element* first = line + kx * g.dilation_w * channels;
#pragma GCC unroll 4
                for (std::size_t p = 0; p < Pixels; ++p) {
                    const __m256i values =
                        _mm256_sub_epi32(load_widened(first + p * pixel_step), zero_point);
                    acc[p] = _mm256_add_epi32(acc[p], _mm256_mullo_epi32(values, w));
                }
            }
        }
#pragma GCC unroll 4
        for (std::size_t p = 0; p < Pixels; ++p) {
            store_channels(task, (row * g.out_w + ow + p) * channels + channel, channel, acc[p]);
        }
    }
}

template <typename Element>
NIMBUS_AVX2 void run_rows(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const RowWalk walk{g.out_w, g.stride_w, g.pad_left, task.kernel_w, g.dilation_w, g.width};
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const auto top = static_cast<std::ptrdiff_t>(row % g.out_h * g.stride_h) -
                         static_cast<std::ptrdiff_t>(g.pad_top);
        const TapRange rows = taps_inside(top, task.kernel_h, g.dilation_h, g.height);
        walk_row<kPixels>(walk, [&](auto pixels, std::size_t ow, TapRange cols) {
            compute_pixels<decltype(pixels)::value, Element>(task, row, ow, rows, cols);
        });
    }
}

}  // namespace

void run_depthwise_avx2(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end) {
    if (task.geometry->channels < kLanes) {  // no whole vector of channels
        run_depthwise_portable(task, row_begin, row_end);
    } else if (task.x_signed) {
        run_rows<std::int8_t>(task, row_begin, row_end);
    } else {
        run_rows<std::uint8_t>(task, row_begin, row_end);
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
