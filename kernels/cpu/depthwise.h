// What the convolution driver (qconv.cpp) hands to the depthwise kernel of each ISA path.
// Declarations only, like qgemm_paths.h, so no inline code is built for a wider ISA.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace nimbus::kernels
