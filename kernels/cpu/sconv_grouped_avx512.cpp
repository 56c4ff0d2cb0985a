// The AVX-512 direct float32 convolution over narrow groups (sconv_direct.h): RegNet's and
// ResNeXt's grouped 3x3 convolutions, 2 to 16 outputs per group. The GEMM path ran one GEMM per
// group, 8 outputs wide in 16-lane panels and a call per group: RegNetY-400MF's 55 groups of 8
// over 7x7 pixels took 0.34 ms, about 9 GFLOP/s. Here a vector holds 16 output channels, those
// of 16 / group_outputs adjacent groups, whose inputs are 16 or fewer adjacent floats of a
// pixel: one masked load per pixel and tap, then per input channel of a group one permute puts
// each lane's input under its weight, and one FMA. A chunk of pixels keeps its accumulators
// and windows in registers while the chunk's weights (taps x group_channels vectors) stay in
// L1. Taps in the padding are skipped (rows) or read as zeros (columns).
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include <algorithm>
#include <array>
#include <cstdint>

#include "sconv_direct.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = kSconvGroupedVector;
constexpr std::size_t kChunkPixels = 8;

NIMBUS_AVX512F void run_block_row(const SconvDirectTask& t, std::size_t row, std::size_t block,
                                  const __m512i* lane_inputs) {
    const ConvGeometry& g = *t.geometry;
    const std::size_t taps = t.kernel_h * t.kernel_w;
    const std::size_t group_outputs = t.out_channels / t.groups;
    const std::size_t group_channels = g.channels / t.groups;
    const std::size_t first_output = block * kLanes;
    const std::size_t outputs = std::min(kLanes, t.out_channels - first_output);
    const std::size_t first_input = first_output / group_outputs * group_channels;
    const std::size_t inputs = (outputs + group_outputs - 1) / group_outputs * group_channels;
    const __mmask16 input_mask = first_lanes(inputs);
    const __mmask16 output_mask = first_lanes(outputs);
    const float* weights = t.weights + block * taps * group_channels * kLanes;
    const __m512 bias = t.bias == nullptr
                            ? _mm512_setzero_ps()
                            : _mm512_maskz_loadu_ps(output_mask, t.bias + first_output);
    const std::size_t image = row / g.out_h;
    const std::size_t oh = row % g.out_h;
    float* out_row = t.out + row * g.out_w * t.out_channels + first_output;
    for (std::size_t ow0 = 0; ow0 < g.out_w; ow0 += kChunkPixels) {
        const std::size_t pixels = std::min(kChunkPixels, g.out_w - ow0);
        __m512 acc[kChunkPixels];
#pragma GCC unroll 8
        for (std::size_t p = 0; p < kChunkPixels; ++p) {
            acc[p] = bias;
        }
        for (std::size_t ky = 0; ky < t.kernel_h; ++ky) {
            const std::ptrdiff_t ih = static_cast<std::ptrdiff_t>(oh * g.stride_h + ky * g.dilation_h) -
                                      static_cast<std::ptrdiff_t>(g.pad_top);
            if (ih < 0 || ih >= static_cast<std::ptrdiff_t>(g.height)) {
                continue;  // the vertical padding adds nothing
            }
            const float* line = t.x + (image * g.height + static_cast<std::size_t>(ih)) * g.width *
                                          g.channels + first_input;
            for (std::size_t kx = 0; kx < t.kernel_w; ++kx) {
                __m512 window[kChunkPixels];
#pragma GCC unroll 8
                for (std::size_t p = 0; p < kChunkPixels; ++p) {
                    const std::ptrdiff_t iw =
                        static_cast<std::ptrdiff_t>((ow0 + p) * g.stride_w + kx * g.dilation_w) -
                        static_cast<std::ptrdiff_t>(g.pad_left);
                    const bool inside = p < pixels && iw >= 0 &&
                                        iw < static_cast<std::ptrdiff_t>(g.width);
                    window[p] = _mm512_maskz_loadu_ps(
                        inside ? input_mask : __mmask16(0),
                        line + (inside ? static_cast<std::size_t>(iw) * g.channels : 0));
                }
                const float* tap_weights = weights + (ky * t.kernel_w + kx) * group_channels * kLanes;
                for (std::size_t c = 0; c < group_channels; ++c) {
                    const __m512 w = _mm512_loadu_ps(tap_weights + c * kLanes);
#pragma GCC unroll 8
                    for (std::size_t p = 0; p < kChunkPixels; ++p) {
                        acc[p] = _mm512_fmadd_ps(
                            w, _mm512_permutexvar_ps(lane_inputs[c], window[p]), acc[p]);
                    }
                }
            }
        }
        for (std::size_t p = 0; p < pixels; ++p) {
            _mm512_mask_storeu_ps(out_row + (ow0 + p) * t.out_channels, output_mask,
                                  activate_ps(acc[p], t.activation));
        }
    }
}

}  // namespace

NIMBUS_AVX512F void run_sconv_grouped_avx512(const SconvDirectTask& task, std::size_t row_begin,
                                             std::size_t row_end) {
    const std::size_t group_outputs = task.out_channels / task.groups;
    const std::size_t group_channels = task.geometry->channels / task.groups;
    // lane_inputs[c]: for each output lane, where input channel c of its group lies in the
    // block's window (its group's first input, plus c).
    __m512i lane_inputs[kLanes];
    for (std::size_t c = 0; c < group_channels; ++c) {
        alignas(64) std::array<std::int32_t, kLanes> index{};
        for (std::size_t lane = 0; lane < kLanes; ++lane) {
            index[lane] = static_cast<std::int32_t>(lane / group_outputs * group_channels + c);
        }
        lane_inputs[c] = _mm512_load_si512(index.data());
    }
    const std::size_t blocks = (task.out_channels + kLanes - 1) / kLanes;
    for (std::size_t row = row_begin; row < row_end; ++row) {
        for (std::size_t block = 0; block < blocks; ++block) {
            run_block_row(task, row, block, lane_inputs);
        }
    }
}

}  // namespace nimbus::kernels

#endif
