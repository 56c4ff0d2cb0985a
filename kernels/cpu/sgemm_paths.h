// What the float32 GEMM driver (sgemm.cpp) and the depthwise driver (sconv.cpp) hand to the
// kernels of each ISA path. Declarations and constants only: an inline function here would be
// compiled into the files built for wider ISAs too.
#pragma once

#include <cstddef>

#include "sgemm.h"

namespace nimbus::kernels {

// The register tile of a path: `rows` rows of A times one panel of `panel_width` columns.
struct SgemmLayout {
    std::size_t rows;
    std::size_t panel_width;
};

inline constexpr SgemmLayout kSgemmPortableLayout{4, 16};
inline constexpr SgemmLayout kSgemmAvx2Layout{6, 16};
inline constexpr SgemmLayout kSgemmAvx512Layout{12, 32};

// One block of the GEMM: `rows` rows of A (already restricted to depths [k0, k0 + kc)) times
// the panels [panel_begin, panel_end). The first depth block starts from zero, later ones add
// to what the previous one stored; the last one runs the epilogue.
struct SgemmBlock {
    const float* a;          // rows x kc, row stride a_stride
    std::size_t a_stride;
    std::size_t rows;
    const float* b;          // PackedSgemmWeights::data
    std::size_t k;           // depth of the whole GEMM: a panel holds k * panel_width floats
    std::size_t k0;
    std::size_t kc;
    std::size_t panel_begin;
    std::size_t panel_end;
    std::size_t n;
    float* out;              // row 0 of the block, column 0 of the GEMM
    std::size_t out_stride;
    const float* bias;       // [n] or null
    const float* residual;   // row 0 of the block, or null
    std::size_t residual_stride;
    Activation activation;
    bool first;
    bool last;
};

void run_sgemm_portable(const SgemmBlock& block);
// Applies `activation` to count floats in place (every activation; scalar).
void activate_portable(float* data, std::size_t count, Activation activation);
#ifdef NIMBUS_X86_KERNELS
void run_sgemm_avx2(const SgemmBlock& block);
void activate_avx2(float* data, std::size_t count, Activation activation);
void run_sgemm_avx512(const SgemmBlock& block);
void activate_avx512(float* data, std::size_t count, Activation activation);
#endif

// ---- depthwise convolution -------------------------------------------------------------------

// One call of the float depthwise convolution, shared read-only by every thread.
struct SDepthwiseTask {
    const float* x;               // [N, H, W, C]
    std::size_t batch;
    std::size_t height;
    std::size_t width;
    std::size_t channels;
    std::size_t out_h;
    std::size_t out_w;
    std::size_t kernel_h;
    std::size_t kernel_w;
    std::size_t stride_h;
    std::size_t stride_w;
    std::size_t pad_top;
    std::size_t pad_left;
    std::size_t dilation_h;
    std::size_t dilation_w;
    const float* weights;         // [KH * KW, padded_channels], zero past channels
    std::size_t padded_channels;
    const float* bias;            // [padded_channels], zero when there is none
    const float* residual;        // [N, OH, OW, C] or null
    Activation activation;
    float* out;                   // [N, OH, OW, C]
};

// Channels of one pass of the AVX-512 path; padded_channels is a multiple of it.
inline constexpr std::size_t kSDepthwiseChannelBlock = 64;

// Each computes output rows [row_begin, row_end) of N * OH.
void run_sdepthwise_portable(const SDepthwiseTask& task, std::size_t row_begin,
                             std::size_t row_end);
#ifdef NIMBUS_X86_KERNELS
void run_sdepthwise_avx2(const SDepthwiseTask& task, std::size_t row_begin,
                         std::size_t row_end);
void run_sdepthwise_avx512(const SDepthwiseTask& task, std::size_t row_begin,
                           std::size_t row_end);
#endif

}  // namespace nimbus::kernels
