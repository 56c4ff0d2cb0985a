// What the int8 convolution driver (qconv.cpp) hands to the direct kernel for convolutions with
// few output channels, such as the first layer of a small CNN: the int8 counterpart of
// sconv_direct.h. The GEMM over gathered windows fills only out_channels of each 16-lane column
// vector there, so the direct kernel puts 16 output pixels of a row in the lanes instead and
// keeps one int32 accumulator per output channel. Declarations, constants and the grouping
// rule that the weight packing and the kernel share; no vector code, like depthwise.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qconv.h"

namespace nimbus::kernels {

// The most output channels that take the direct kernel (one zmm accumulator per channel and
// chunk of 16 pixels).
inline constexpr std::size_t kQconvDirectMaxOutputs = 8;
// Taps of a kernel row, or channels, that one vpdpbusd sums in each int32 lane.
inline constexpr std::size_t kQconvDirectGroup = 4;
// The most input channels: the kernel turns input rows into its dword rows in registers, from
// one 64-byte load of 16 pixels.
inline constexpr std::size_t kQconvDirectMaxChannels = 4;
// The widest horizontal dilation: the 4 taps of a dword span at most two blocks of 16 pixels.
inline constexpr std::size_t kQconvDirectMaxDilation = 5;

// How the direct path groups the KW taps x C channels of a kernel row in fours. Each channel's
// taps go in groups of 4 consecutive taps (one "tap group" dword row per channel), except that
// the last KW % 4 taps go in groups of 4 channels instead ("channel group" dword rows of whole
// pixels) where that takes fewer groups: LeNet's 5 taps over 3 channels take 3 tap groups and
// 1 channel group per kernel row instead of 6 tap groups.
struct QconvDirectLayout {
    std::size_t tap_groups;      // per channel and kernel row, the last padded with zero weights
    std::size_t packed_taps;     // the last taps of a kernel row, by channel groups; or 0
    std::size_t channel_groups;  // ceil(C / 4), zero weights past C; 0 without packed_taps
};

inline QconvDirectLayout qconv_direct_layout(std::size_t channels, std::size_t kernel_w) {
    const std::size_t remainder = kernel_w % kQconvDirectGroup;
    const std::size_t channel_groups = (channels + kQconvDirectGroup - 1) / kQconvDirectGroup;
    if (remainder > 0 && remainder * channel_groups < channels) {
        return {kernel_w / kQconvDirectGroup, remainder, channel_groups};
    }
    return {(kernel_w + kQconvDirectGroup - 1) / kQconvDirectGroup, 0, 0};
}

// One call, shared read-only by every thread. Needs groups == 1, stride_w == 1 (the pixels of a
// chunk then read adjacent inputs), the bounds above, and a u8 or s8 result clamped to
// [lo, hi] without a residual or a float activation.
struct QconvDirectTask {
    const std::uint8_t* x;        // [N, H, W, C], u8 or s8
    std::uint8_t flip;            // 0x80 for s8 activations, which the kernel reads as x + 128
    std::uint8_t fill;            // the activation zero point as the kernel reads it (padding)
    const ConvGeometry* geometry;
    std::size_t kernel_h;
    std::size_t kernel_w;
    std::size_t out_channels;     // 1 to kQconvDirectMaxOutputs
    QconvDirectLayout layout;     // qconv_direct_layout(C, kernel_w)
    const std::int32_t* weights;  // PackedConvWeights::direct_weights
    // [O]: bias - fill * sum(w[o]), wrapping: the padding taps read fill like the others.
    const std::int32_t* offset;
    const float* scale;           // [O]
    std::int32_t zero_point;
    std::int32_t lo;
    std::int32_t hi;
    std::uint8_t* out;            // [N, OH, OW, O], u8 or s8
};

#ifdef NIMBUS_X86_KERNELS
// Computes output rows [row_begin, row_end) of N * OH.
void run_qconv_direct_avx512(const QconvDirectTask& task, std::size_t row_begin,
                             std::size_t row_end);
#endif

}  // namespace nimbus::kernels
