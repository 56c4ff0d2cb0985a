// Float32 2-D convolution over NHWC activations, with the epilogue of sgemm.h.
//
// With x[N, H, W, C] and weights w[O, C / groups, KH, KW] packed once:
//     out[n, oh, ow, o] = act(sum x[n, ih, iw, c] * w[o, c', ky, kx] + bias[o]
//                             + residual[n, oh, ow, o])
// over the taps of the window of (oh, ow) inside the image (padding contributes zero).
//
// Depthwise convolutions (groups == C == O) run a direct kernel vectorized over channels. On the
// AVX-512 path, so do convolutions with few output channels and a horizontal stride of 1
// (sconv_direct.h), vectorized over the pixels of a row instead, convolutions over narrow groups
// (vectors of the outputs of adjacent groups), and 3x3 stride-1 convolutions
// with enough channels run Winograd F(2x2, 3x3) (sconv_winograd.h). The rest are GEMMs whose A
// rows are the windows of output pixels, gathered block by block into a small buffer (implicit
// im2col, never the whole matrix), or the activations themselves for a 1x1, stride-1, unpadded
// convolution; where windows read much padding, one GEMM per region of output pixels whose
// windows share their taps inside the image, over those taps alone.
#pragma once

#include <cstddef>
#include <vector>

#include "isa.h"
#include "qconv.h"
#include "sgemm.h"

namespace nimbus::kernels {

struct PackedSconvWeights {
    Isa isa = Isa::portable;
    std::size_t out_channels = 0;
    std::size_t group_channels = 0;  // input channels per group
    std::size_t kernel_h = 0;
    std::size_t kernel_w = 0;
    std::size_t groups = 1;
    bool depthwise = false;
    // GEMM path: per group, [O / groups, KH * KW * group_channels] with depth ordered
    // (ky, kx, c) like a gathered NHWC window.
    std::vector<PackedSgemmWeights> group_weights;
    // Depthwise path: [KH * KW, padded_channels], zero past out_channels.
    std::vector<float> depthwise_weights;
    std::size_t padded_channels = 0;
    // Direct path (AVX-512, groups == 1, out_channels <= kSconvDirectMaxOutputs, more than one
    // tap; empty otherwise): [KH, C, KW, O], in the order the kernel walks the taps.
    // group_weights stays for the horizontal strides that this path does not take.
    std::vector<float> direct_weights;
    // Few-inputs path (AVX-512, groups == 1, few input channels, 9 to 64 outputs, more than one
    // tap: sconv_direct.h; empty otherwise): [KH, KW, C, O rounded up to 16], zero past O.
    // group_weights stays for the dilations that this path does not take.
    std::vector<float> few_inputs_weights;
    // Grouped path (AVX-512, 2 to 16 outputs per group dividing 16, group_channels no more than
    // that: sconv_direct.h; empty otherwise): per vector of 16 output channels, [KH * KW,
    // group_channels, 16], zero past O. group_weights stays for a residual, which this path
    // does not take.
    std::vector<float> grouped_weights;
    // Winograd path (AVX-512, 3x3, one group, enough channels: sconv_winograd.h; empty
    // otherwise): U = G g G^T as 16 GEMM weights [O, C], one per value of a transformed tile.
    // group_weights stays for the strides and dilations that this path does not take, unless
    // the weights were packed for stride 1 and dilation 1 only.
    std::vector<PackedSgemmWeights> winograd_weights;
    bool unit_stride_only = false;  // group_weights left empty: only stride 1, dilation 1
};

// w is OIHW [out_channels, group_channels, kernel_h, kernel_w]; out_channels is a multiple of
// groups (checked by the caller). With `unit_stride` (the weights will only run with stride 1
// and dilation 1), weights that take the Winograd path are packed in that form alone.
PackedSconvWeights pack_sconv_weights(const float* w, std::size_t out_channels,
                                      std::size_t group_channels, std::size_t kernel_h,
                                      std::size_t kernel_w, std::size_t groups, Isa isa,
                                      bool unit_stride = false);

// out[N, OH, OW, O] from x[N, H, W, C], C == group_channels * groups (ConvGeometry of
// qconv.h). The epilogue's residual, if any, is [N, OH, OW, O]; its stride is ignored. Weights
// packed unit_stride_only take only stride 1 and dilation 1 (checked by the caller).
void sconv2d(const float* x, const ConvGeometry& geometry, const PackedSconvWeights& weights,
             const SgemmEpilogue& epilogue, float* out, std::size_t threads);

// sconv2d without a residual, then max_pool2d over its result, as qconv2d_max_pool2d does
// (conv_pool.cpp). Not for weights packed in the Winograd form, whose tiles would start on
// other rows in a band (checked by the caller).
void sconv2d_max_pool2d(const float* x, const ConvGeometry& conv,
                        const PackedSconvWeights& weights, const SgemmEpilogue& epilogue,
                        const PoolGeometry& pool, float* out, std::size_t threads);

}  // namespace nimbus::kernels
