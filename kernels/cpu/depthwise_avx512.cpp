// The AVX-512 path of the depthwise convolution: 64 channels of one output pixel at a time,
// (x - x_zp) * w exact in int32 lanes, summed over the taps of the window that lie inside the
// image, then the GEMM epilogue (qgemm.h) on the registers. vpmaddwd forms the products: it
// multiplies the low 16 bits of x - x_zp (|x - x_zp| <= 255) by the weight, and the high
// halves add nothing because the packed weights keep theirs zero.
//
// Only functions marked NIMBUS_AVX512 use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "depthwise.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define NIMBUS_AVX512 __attribute__((target("avx512f,avx512bw")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;

// The lanes of vector `block` that hold some of the first `count` channels.
inline std::uint32_t lane_mask(std::size_t count, std::size_t block) {
    const std::size_t first = block * kLanes;
    if (count <= first) {
        return 0;
    }
    return count - first >= kLanes ? 0xffffu : (1u << (count - first)) - 1;
}

// 16 activations widened to int32. The masked load of a partial vector does not touch the
// bytes of channels past the end; full vectors take the plain load, which is faster.
template <bool Signed, bool Partial>
NIMBUS_AVX512 inline __m512i load_channels(const std::uint8_t* pixel, __mmask64 mask) {
    const __m128i bytes =
        Partial ? _mm512_castsi512_si128(_mm512_maskz_loadu_epi8(mask, pixel))
                : _mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel));
    return Signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
}

NIMBUS_AVX512 inline void store_vector(const DepthwiseTask& task, std::size_t index,
                                       std::size_t channel, std::uint32_t lanes, __m512i raw) {
    const auto mask = static_cast<__mmask16>(lanes);
    const __m512i acc = _mm512_add_epi32(raw, _mm512_loadu_si512(task.bias + channel));
    if (task.type == OutputType::s32) {
        _mm512_mask_storeu_epi32(static_cast<std::int32_t*>(task.out) + index, mask, acc);
        return;
    }
    // cvtdq2ps and cvtps2dq round half to even under the default MXCSR, like the reference.
    const __m512 scaled =
        _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(task.scale + channel));
    if (task.type == OutputType::f32) {
        _mm512_mask_storeu_ps(static_cast<float*>(task.out) + index, mask, scaled);
        return;
    }
    // Clamping before rounding equals clamping after it and keeps the value inside int32.
    const __m512 lo = _mm512_set1_ps(static_cast<float>(task.lo - task.zero_point));
    const __m512 hi = _mm512_set1_ps(static_cast<float>(task.hi - task.zero_point));
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(scaled, lo), hi);
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(clamped),
                                       _mm512_set1_epi32(task.zero_point));
    _mm512_mask_cvtepi32_storeu_epi8(static_cast<std::uint8_t*>(task.out) + index, mask, q);
}

// Channel vectors summed in one pass over the taps: their accumulators stay in registers, and
// the address arithmetic of a tap is shared by all of them.
constexpr std::size_t kBlocks = kDepthwiseChannelBlock / kLanes;

// The taps of one output pixel that lie inside the image.
struct Window {
    const std::uint8_t* image;  // x[n]
    std::ptrdiff_t top;
    std::ptrdiff_t left;
    TapRange rows;
    TapRange cols;
};

// Sums (x - x_zp) * w over the window for `Blocks` vectors of channels from `channel`, of
// which `count` exist (only the last vector may be partial, when LastPartial), and finishes
// them into the output pixel at `out_index`.
template <bool Signed, std::size_t Blocks, bool LastPartial>
NIMBUS_AVX512 void compute_channels(const DepthwiseTask& task, const Window& window,
                                    std::size_t channel, std::size_t count,
                                    std::size_t out_index) {
    const ConvGeometry& g = *task.geometry;
    const std::size_t channels = g.channels;
    const __m512i x_zero_point = _mm512_set1_epi32(task.x_zero_point);
    __m512i acc[Blocks];
    __mmask64 masks[Blocks];
#pragma GCC unroll 4
    for (std::size_t b = 0; b < Blocks; ++b) {
        acc[b] = _mm512_setzero_si512();
        masks[b] = lane_mask(count, b);
    }
    for (std::size_t ky = window.rows.begin; ky < window.rows.end; ++ky) {
        const std::size_t ih = static_cast<std::size_t>(window.top) + ky * g.dilation_h;
        const std::uint8_t* line = window.image + ih * g.width * channels + channel;
        const std::int32_t* w = task.weights + ky * task.kernel_w * task.padded_channels + channel;
        for (std::size_t kx = window.cols.begin; kx < window.cols.end; ++kx) {
            const std::size_t iw = static_cast<std::size_t>(window.left) + kx * g.dilation_w;
            const std::uint8_t* pixel = line + iw * channels;
            const std::int32_t* weights = w + kx * task.padded_channels;
#pragma GCC unroll 4
            for (std::size_t b = 0; b < Blocks; ++b) {
                const bool partial = LastPartial && b + 1 == Blocks;
                const __m512i v = partial
                                      ? load_channels<Signed, true>(pixel + b * kLanes, masks[b])
                                      : load_channels<Signed, false>(pixel + b * kLanes, masks[b]);
                const __m512i product = _mm512_madd_epi16(
                    _mm512_sub_epi32(v, x_zero_point), _mm512_loadu_si512(weights + b * kLanes));
                acc[b] = _mm512_add_epi32(acc[b], product);
            }
        }
    }
#pragma GCC unroll 4
    for (std::size_t b = 0; b < Blocks; ++b) {
        store_vector(task, out_index + b * kLanes, channel + b * kLanes, lane_mask(count, b),
                     acc[b]);
    }
}

using ChannelKernel = void (*)(const DepthwiseTask&, const Window&, std::size_t, std::size_t,
                              std::size_t);

// The kernel for the last channels of a pixel, `left` of them (fewer than a full pass).
template <bool Signed>
ChannelKernel tail_kernel(std::size_t left) {
    static_assert(kBlocks == 4, "kKernels has one row per count of vectors");
    constexpr ChannelKernel kKernels[kBlocks][2] = {
        {compute_channels<Signed, 1, false>, compute_channels<Signed, 1, true>},
        {compute_channels<Signed, 2, false>, compute_channels<Signed, 2, true>},
        {compute_channels<Signed, 3, false>, compute_channels<Signed, 3, true>},
        {compute_channels<Signed, 4, false>, compute_channels<Signed, 4, true>},
    };
    return kKernels[(left + kLanes - 1) / kLanes - 1][left % kLanes != 0];
}

template <bool Signed>
NIMBUS_AVX512 void run_rows(const DepthwiseTask& task, std::size_t row_begin,
                            std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const auto* x = static_cast<const std::uint8_t*>(task.x);
    const std::size_t channels = g.channels;
    const std::size_t full_channels = channels / kDepthwiseChannelBlock * kDepthwiseChannelBlock;
    const std::size_t left = channels - full_channels;
    const ChannelKernel last_channels = left ? tail_kernel<Signed>(left) : nullptr;
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const std::size_t image = row / g.out_h;
        const std::size_t oh = row % g.out_h;
        Window window;
        window.image = x + image * g.height * g.width * channels;
        window.top = static_cast<std::ptrdiff_t>(oh * g.stride_h) -
                     static_cast<std::ptrdiff_t>(g.pad_top);
        window.rows = taps_inside(window.top, task.kernel_h, g.dilation_h, g.height);
        for (std::size_t ow = 0; ow < g.out_w; ++ow) {
            window.left = static_cast<std::ptrdiff_t>(ow * g.stride_w) -
                          static_cast<std::ptrdiff_t>(g.pad_left);
            window.cols = taps_inside(window.left, task.kernel_w, g.dilation_w, g.width);
            const std::size_t out_index = (row * g.out_w + ow) * channels;
            for (std::size_t c = 0; c < full_channels; c += kDepthwiseChannelBlock) {
                compute_channels<Signed, kBlocks, false>(task, window, c, channels - c,
                                                         out_index + c);
            }
            if (last_channels) {
                last_channels(task, window, full_channels, left, out_index + full_channels);
            }
        }
    }
}

}  // namespace

void run_depthwise_avx512(const DepthwiseTask& task, std::size_t row_begin,
                          std::size_t row_end) {
    if (task.x_signed) {
        run_rows<true>(task, row_begin, row_end);
    } else {
        run_rows<false>(task, row_begin, row_end);
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
