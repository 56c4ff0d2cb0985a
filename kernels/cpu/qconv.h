// Quantized int8 2-D convolution over NHWC activations, with the epilogue of qgemm.h.
//
// With activations x[N, H, W, C] (u8, or s8 when x_signed), their zero point x_zp, and weights
// w[O, C / groups, KH, KW] packed once:
//     acc[n, oh, ow, o] = sum (x[n, ih, iw, c] - x_zp) * w[o, c', ky, kx] + bias[o]   (int32)
// over the taps of the window of (oh, ow) inside the image (padding contributes nothing), and
// the result [N, OH, OW, O] follows the Epilogue, like nimbus.compiler.ops.quant.qconv2d.
//
// Depthwise convolutions (groups == C == O) run a direct kernel, and so do those with few output
// channels on AVX-512 VNNI (qconv_direct.h); the rest become GEMMs over rows of gathered
// windows (im2col), or over the activations themselves for a 1x1, stride-1, unpadded
// convolution. On AVX-512 VNNI, a convolution of one group over u8 activations reads the
// windows inside the image in place, each kernel row a run of bytes (an implicit GEMM), and
// gathers only those that overlap the padding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "pool.h"
#include "qgemm.h"

namespace nimbus::kernels {

struct PackedConvWeights {
    Isa isa = Isa::portable;
    std::size_t out_channels = 0;
    std::size_t group_channels = 0;  // input channels per group
    std::size_t kernel_h = 0;
    std::size_t kernel_w = 0;
    std::size_t groups = 1;
    bool depthwise = false;
    // GEMM path: per group, [O / groups, conv_gemm_depth] with depth ordered (ky, kx, c) like
    // a gathered NHWC window, each kernel row taking row_depth bytes (conv_row_depth).
    std::vector<PackedWeights> group_weights;
    std::size_t row_depth = 0;
    // Depthwise path, portable and AVX2: [KH * KW, padded_channels], zero past out_channels;
    // each int32 holds the weight in its low 16 bits and zeros above.
    std::vector<std::int32_t> depthwise_weights;
    std::size_t padded_channels = 0;
    // Depthwise path, AVX-512 VNNI: per 64 channels, depthwise_tap_slots (depthwise.h) taps in
    // groups of 4, each group 4 vectors of 16 int32 lanes; int32 element e of 128-bit lane L of
    // vector q holds the 4 taps of channel 16 * L + 4 * q + e (see depthwise_avx512.cpp). Zero
    // past out_channels and KH * KW.
    std::vector<std::int8_t> depthwise_vnni_weights;
    // Depthwise path, AVX-512 VNNI: the sum of the weights of each channel, zero past
    // out_channels.
    std::vector<std::int32_t> depthwise_weight_sums;
    // Direct path (AVX-512 VNNI, groups == 1, out_channels <= kQconvDirectMaxOutputs, input
    // channels <= kQconvDirectMaxChannels, more than one tap; empty otherwise): per kernel
    // row, the O dwords of 4 weights of each group of qconv_direct_layout (qconv_direct.h):
    // the tap groups of each channel, then the channel groups of each packed tap, zero past KW
    // or C; in the order the kernel walks them. group_weights stays for what this path does
    // not take; its column_sums serve both.
    std::vector<std::int32_t> direct_weights;
};

struct ConvGeometry {
    std::size_t batch = 0;
    std::size_t height = 0;
    std::size_t width = 0;
    std::size_t channels = 0;
    std::size_t stride_h = 1;
    std::size_t stride_w = 1;
    std::size_t pad_top = 0;
    std::size_t pad_left = 0;
    std::size_t pad_bottom = 0;
    std::size_t pad_right = 0;
    std::size_t dilation_h = 1;
    std::size_t dilation_w = 1;
    std::size_t out_h = 0;  // from conv_output_size
    std::size_t out_w = 0;
};

// The bytes of one kernel row of a window in the GEMM's rows: kernel_w * group_channels, or,
// on the AVX-512 VNNI path with one group, that rounded up to the 4-byte groups of vpdpbusd
// (zero weights) when it costs few products, so that windows can be read in place as runs of
// whole groups.
std::size_t conv_row_depth(std::size_t kernel_h, std::size_t kernel_w, std::size_t group_channels,
                           std::size_t groups, Isa isa);

// The depth of the GEMM of each group: kernel_h rows of conv_row_depth, padded with zero weights
// to the 4-byte groups of vpdpbusd (to 64 bytes, a tile row, for AMX) except for a 1x1 kernel,
// whose rows can be the activations.
std::size_t conv_gemm_depth(std::size_t kernel_h, std::size_t kernel_w,
                            std::size_t group_channels, std::size_t groups, Isa isa);

// Positions of a window of `kernel` taps spaced `dilation` apart, moved by `stride` over
// `size` + padding; 0 when not even one window fits.
std::size_t conv_output_size(std::size_t size, std::size_t kernel, std::size_t stride,
                             std::size_t pad_begin, std::size_t pad_end, std::size_t dilation);

// w is OIHW [out_channels, group_channels, kernel_h, kernel_w]; out_channels is a multiple of
// groups, and conv_gemm_depth fits kMaxDepthU8S8 (checked by the caller).
PackedConvWeights pack_conv_weights(const std::int8_t* w, std::size_t out_channels,
                                    std::size_t group_channels, std::size_t kernel_h,
                                    std::size_t kernel_w, std::size_t groups, Isa isa);

// out[N, OH, OW, O] from x[N, H, W, C], C == group_channels * groups. An epilogue residual
// ([N, OH, OW, O]) needs one group, not depthwise (checked by the caller).
void qconv2d(const void* x, bool x_signed, std::int32_t x_zero_point,
             const ConvGeometry& geometry, const PackedConvWeights& weights,
             const Epilogue& epilogue, void* out, std::size_t threads);

// qconv2d with a u8 or s8 result, then max_pool2d over that result with `pool` (whose batch,
// height, width and channels are the convolution's result's), in bands of rows that stay in
// cache (conv_pool.cpp). Every row of the convolution must read a row of the image (padding
// rows fewer than the kernel's), and every pooling window start above its last row.
void qconv2d_max_pool2d(const void* x, bool x_signed, std::int32_t x_zero_point,
                        const ConvGeometry& conv, const PackedConvWeights& weights,
                        const Epilogue& epilogue, const PoolGeometry& pool, void* out,
                        std::size_t threads);

}  // namespace nimbus::kernels
