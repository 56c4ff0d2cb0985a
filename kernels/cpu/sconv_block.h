// An inverted residual block (MobileNetV2's expand 1x1 -> depthwise -> project 1x1) in float32
// NHWC, run band by band of output rows so that the expanded activations stay in cache:
//     e   = act_e(conv1x1(x, expand) + bias_e)      (e = x for a block without expansion)
//     d   = act_d(depthwise(e) + bias_d)
//     out = act_p(conv1x1(d, project) + bias_p + residual)
// Layer by layer, e (six times x) went to memory and back twice, and the 1x1 layers that read
// and wrote it ran at a third of their arithmetic rate; without expansion (MobileNetV2's first
// block, a depthwise-separable convolution), d still did. Each band's layers are the sconv2d
// kernels on one thread, so every value is computed as the sconv2d calls compute it.
#pragma once

#include <cstddef>

#include "sconv.h"

namespace nimbus::kernels {

struct InvertedResidual {
    const PackedSconvWeights* expand = nullptr;     // 1x1, one group: C -> E; or null (E = C)
    SgemmEpilogue expand_epilogue;                  // bias and activation (no residual)
    const PackedSconvWeights* depthwise = nullptr;  // E -> E, groups == E
    ConvGeometry depthwise_geometry;                // over e [N, H, W, E], out_h and out_w set
    SgemmEpilogue depthwise_epilogue;               // bias and activation (no residual)
    const PackedSconvWeights* project = nullptr;    // 1x1, one group: E -> O
    SgemmEpilogue project_epilogue;                 // residual [N, OH, OW, O] or null
};

// out[N, OH, OW, O] from x[N, H, W, C]; bands are shared out over at most `threads` threads.
void inverted_residual(const float* x, const InvertedResidual& block, float* out,
                       std::size_t threads);

}  // namespace nimbus::kernels
