// What the float32 convolution driver (sconv.cpp) hands to its direct kernels, which skip the
// GEMM over gathered windows where that fills its registers poorly or copies as long as it
// multiplies:
// - few output channels, such as the first layer of a small CNN: the GEMM fills only
//   out_channels of each 16-lane column panel there, so this kernel puts 16 output pixels of a
//   row in the lanes instead and keeps one accumulator per output channel;
// - few input channels, such as the first layer of an image model (3 channels, a 3x3 or 7x7
//   kernel, stride 2): gathering a window copies a few runs of a few floats, as long as the
//   GEMM multiplies it, so this kernel keeps output channels in the lanes and broadcasts each
//   input straight from a zero-padded copy of its row, any stride.
// Declarations and constants only, like sgemm_paths.h.
#pragma once

#include <cstddef>

#include "qconv.h"
#include "sgemm.h"

namespace nimbus::kernels {

// The most output channels that take the few-outputs kernel (one zmm accumulator per channel
// and chunk of 16 pixels).
inline constexpr std::size_t kSconvDirectMaxOutputs = 8;

// The most input channels, and the range of output channels, that take the few-inputs kernel:
// up to 4 vectors of 16 outputs stay in registers for several pixels.
inline constexpr std::size_t kSconvFewInputsMaxChannels = 4;
inline constexpr std::size_t kSconvFewInputsMinOutputs = kSconvDirectMaxOutputs + 1;
inline constexpr std::size_t kSconvFewInputsMaxOutputs = 64;
// Its weights hold the output channels padded to whole vectors of this many floats.
inline constexpr std::size_t kSconvFewInputsVector = 16;

// The grouped kernel's vector of output channels: those of 16 / group_outputs adjacent groups,
// which read 16 or fewer adjacent input channels (group_channels <= group_outputs).
inline constexpr std::size_t kSconvGroupedVector = 16;

// One call, shared read-only by every thread. The few-outputs and few-inputs kernels need
// groups == 1; the few-outputs kernel needs stride_w == 1 (the pixels of a chunk then read
// adjacent inputs), the few-inputs kernel dilation 1. The grouped kernel takes no residual.
struct SconvDirectTask {
    const float* x;               // [N, H, W, C]
    const ConvGeometry* geometry;
    std::size_t kernel_h;
    std::size_t kernel_w;
    std::size_t out_channels;
    const float* weights;         // PackedSconvWeights::direct_weights or few_inputs_weights
    const float* bias;            // [O] or null
    const float* residual;        // [N, OH, OW, O] or null
    Activation activation;
    float* out;                   // [N, OH, OW, O]
    std::size_t groups = 1;
};

#ifdef NIMBUS_X86_KERNELS
// Each computes output rows [row_begin, row_end) of N * OH: few outputs
// (sconv_direct_avx512.cpp), few inputs (sconv_few_inputs_avx512.cpp), and:
void run_sconv_direct_avx512(const SconvDirectTask& task, std::size_t row_begin,
                             std::size_t row_end);
void run_sconv_few_inputs_avx512(const SconvDirectTask& task, std::size_t row_begin,
                                 std::size_t row_end);
// Narrow groups (sconv_grouped_avx512.cpp).
void run_sconv_grouped_avx512(const SconvDirectTask& task, std::size_t row_begin,
                              std::size_t row_end);
#endif

}  // namespace nimbus::kernels
