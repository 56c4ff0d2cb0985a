// What the float32 convolution driver (sconv.cpp) hands to the direct kernel for convolutions
// with few output channels, such as the first layer of a small CNN. The GEMM over gathered
// windows fills only out_channels of each 16-lane column panel there, so the direct kernel puts
// 16 output pixels of a row in the lanes instead and keeps one accumulator per output channel.
// Declarations and constants only, like sgemm_paths.h.
#pragma once

#include <cstddef>

#include "qconv.h"
#include "sgemm.h"

namespace nimbus::kernels {

// The most output channels that take the direct kernel (one zmm accumulator per channel and
// chunk of 16 pixels).
inline constexpr std::size_t kSconvDirectMaxOutputs = 8;

// One call, shared read-only by every thread. Needs groups == 1 and stride_w == 1: the pixels of
// a chunk then read adjacent inputs.
struct SconvDirectTask {
    const float* x;               // [N, H, W, C]
    const ConvGeometry* geometry;
    std::size_t kernel_h;
    std::size_t kernel_w;
    std::size_t out_channels;     // 1 to kSconvDirectMaxOutputs
    const float* weights;         // PackedSconvWeights::direct_weights
    const float* bias;            // [O] or null
    const float* residual;        // [N, OH, OW, O] or null
    Activation activation;
    float* out;                   // [N, OH, OW, O]
};

#ifdef NIMBUS_X86_KERNELS
// Computes output rows [row_begin, row_end) of N * OH.
void run_sconv_direct_avx512(const SconvDirectTask& task, std::size_t row_begin,
                             std::size_t row_end);
#endif

}  // namespace nimbus::kernels
