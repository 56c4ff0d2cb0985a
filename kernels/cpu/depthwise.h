// What the convolution driver (qconv.cpp) hands to the depthwise kernel of each ISA path.
// Declarations only, like qgemm_paths.h, so no inline code is built for a wider ISA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "qconv.h"

namespace nimbus::kernels {

// One call, shared read-only by every thread. Per-channel arrays cover padded_channels.
struct DepthwiseTask {
    const void* x;                // [N, H, W, C]
    bool x_signed;
    std::int32_t x_zero_point;
    const ConvGeometry* geometry;
    std::size_t kernel_h;
    std::size_t kernel_w;
    const std::int32_t* weights;  // PackedConvWeights::depthwise_weights (not AVX-512 VNNI)
    const std::int8_t* vnni_weights;  // PackedConvWeights::depthwise_vnni_weights
    const std::uint8_t* padding;  // AVX-512 VNNI: padded_channels bytes of x_zp
    std::size_t padded_channels;
    // zero when there is none; for AVX-512 VNNI less x_zp (as u8) times the channel's weight sum
    const std::int32_t* bias;
    const float* scale;           // zero past C
    OutputType type;
    std::int32_t zero_point;
    std::int32_t lo;
    std::int32_t hi;
    void* out;                    // [N, OH, OW, C]
};

// Channels of one pass of the AVX-512 path, which padded_channels is a multiple of.
inline constexpr std::size_t kDepthwiseChannelBlock = 64;
// Taps that vpdpbusd sums in one int32 lane.
inline constexpr std::size_t kDepthwiseTapGroup = 4;

// The taps of the AVX-512 VNNI weights: KH * KW padded with zero weights to whole groups.
inline std::size_t depthwise_tap_slots(std::size_t kernel_h, std::size_t kernel_w) {
    return (kernel_h * kernel_w + kDepthwiseTapGroup - 1) / kDepthwiseTapGroup *
           kDepthwiseTapGroup;
}

// Each computes output rows [row_begin, row_end) of N * OH.
void run_depthwise_portable(const DepthwiseTask& task, std::size_t row_begin,
                            std::size_t row_end);
#ifdef NIMBUS_X86_KERNELS
void run_depthwise_avx2(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end);
void run_depthwise_avx512(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end);
#endif

// The taps [begin, end) of a window starting at `origin` (may be negative) that land inside
// [0, size). Shared by the paths that skip padding instead of reading it.
struct TapRange {
    std::size_t begin;
    std::size_t end;
};
TapRange taps_inside(std::ptrdiff_t origin, std::size_t kernel, std::size_t dilation,
                     std::size_t size);

// The horizontal geometry of a depthwise convolution's output rows.
struct RowWalk {
    std::size_t out_w;
    std::size_t stride;
    std::size_t pad;
    std::size_t kernel;
    std::size_t dilation;
    std::size_t width;
};

// Walks the pixels of an output row for the paths that skip padding: each run of Pixels
// adjacent pixels whose windows lie inside the image goes to compute(Pixels, ow, all the
// kernel's columns), every other pixel alone to compute(1, ow, its columns inside), the count
// as a std::integral_constant.
template <std::size_t Pixels, typename Compute>
void walk_row(const RowWalk& walk, Compute compute) {
    const std::size_t reach = (walk.kernel - 1) * walk.dilation;
    for (std::size_t ow = 0; ow < walk.out_w;) {
        const std::size_t last = ow + Pixels - 1;
        if (last < walk.out_w && ow * walk.stride >= walk.pad &&
            last * walk.stride - walk.pad + reach < walk.width) {
            compute(std::integral_constant<std::size_t, Pixels>(), ow, TapRange{0, walk.kernel});
            ow += Pixels;
            continue;
        }
        const auto left =
            static_cast<std::ptrdiff_t>(ow * walk.stride) - static_cast<std::ptrdiff_t>(walk.pad);
        compute(std::integral_constant<std::size_t, 1>(), ow,
                taps_inside(left, walk.kernel, walk.dilation, walk.width));
        ++ow;
    }
}

}  // namespace nimbus::kernels
