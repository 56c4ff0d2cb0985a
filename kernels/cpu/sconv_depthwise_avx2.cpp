// The AVX2 path of the float32 depthwise convolution: channels in the 8 lanes of a ymm
// register, each tap one FMA from the bias up, over the taps inside the image. Inside the
// image, a pass takes kPixels adjacent output pixels of a row, which share each load of a tap's
// weights; pixels whose windows cross the left or right edge take the pass alone. The residual
// is added and relu / relu6 clamp in registers; the other activations run over the finished
// output row (activate_avx2). Fewer than 8 channels take the portable path.
//
// Only functions marked NIMBUS_AVX2_FMA use AVX2 (see qgemm_avx512_vnni.cpp).
#include <algorithm>

#include "depthwise.h"
#include "sgemm_paths.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#define NIMBUS_AVX2_FMA __attribute__((target("avx2,fma")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 8;
constexpr std::size_t kPixels = 4;

// Output pixels [ow, ow + Pixels) of output row `row` (of N * OH), over kernel rows `rows` and
// kernel columns `cols`, which must lie inside the image for every one of the pixels. Channels
// go 8 at a time; the last 8 overlap the ones before where C is no multiple of 8 (C >= 8), and
// compute the same values again.
template <std::size_t Pixels>
NIMBUS_AVX2_FMA void compute_pixels(const SDepthwiseTask& t, std::size_t row, std::size_t ow,
                                    TapRange rows, TapRange cols) {
    const std::size_t channels = t.channels;
    const std::size_t image = row / t.out_h;
    const std::size_t top = row % t.out_h * t.stride_h - t.pad_top;  // wraps when padded
    const std::size_t left = ow * t.stride_w - t.pad_left;
    const std::size_t pixel_step = t.stride_w * channels;  // between adjacent output pixels
    const float* const image_x = t.x + image * t.height * t.width * channels;
    const bool relu = t.activation == Activation::relu || t.activation == Activation::relu6;
    const bool relu6 = t.activation == Activation::relu6;
    for (std::size_t next = 0; next < channels; next += kLanes) {
        const std::size_t channel = std::min(next, channels - kLanes);
        __m256 acc[Pixels];
        const __m256 bias = _mm256_loadu_ps(t.bias + channel);  // padded: whole loads fit
#pragma GCC unroll 4
        for (std::size_t p = 0; p < Pixels; ++p) {
            acc[p] = bias;
        }
        for (std::size_t ky = rows.begin; ky < rows.end; ++ky) {
            const float* line = image_x + (top + ky * t.dilation_h) * t.width * channels +
                                left * channels + channel;
            const float* weights = t.weights + ky * t.kernel_w * t.padded_channels + channel;
            for (std::size_t kx = cols.begin; kx < cols.end; ++kx) {
                const __m256 w = _mm256_loadu_ps(weights + kx * t.padded_channels);
                const float* first = line + kx * t.dilation_w * channels;
#pragma GCC unroll 4
                for (std::size_t p = 0; p < Pixels; ++p) {
                    acc[p] = _mm256_fmadd_ps(_mm256_loadu_ps(first + p * pixel_step), w, acc[p]);
                }
            }
        }
#pragma GCC unroll 4
        for (std::size_t p = 0; p < Pixels; ++p) {
            const std::size_t index = (row * t.out_w + ow + p) * channels + channel;
            __m256 value = acc[p];
            if (t.residual != nullptr) {
                value = _mm256_add_ps(value, _mm256_loadu_ps(t.residual + index));
            }
            if (relu) {
                value = _mm256_max_ps(_mm256_setzero_ps(), value);
            }
            if (relu6) {
                value = _mm256_min_ps(_mm256_set1_ps(6.0f), value);
            }
            _mm256_storeu_ps(t.out + index, value);
        }
    }
}

}  // namespace

void run_sdepthwise_avx2(const SDepthwiseTask& task, std::size_t row_begin,
                         std::size_t row_end) {
    if (task.channels < kLanes) {  // no whole vector of channels
        run_sdepthwise_portable(task, row_begin, row_end);
        return;
    }
    const RowWalk walk{task.out_w, task.stride_w, task.pad_left, task.kernel_w, task.dilation_w,
                       task.width};
    const bool in_registers = clamps_in_registers(task.activation);
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const auto top = static_cast<std::ptrdiff_t>(row % task.out_h * task.stride_h) -
                         static_cast<std::ptrdiff_t>(task.pad_top);
        const TapRange rows = taps_inside(top, task.kernel_h, task.dilation_h, task.height);
        walk_row<kPixels>(walk, [&](auto pixels, std::size_t ow, TapRange cols) {
            compute_pixels<decltype(pixels)::value>(task, row, ow, rows, cols);
        });
        if (!in_registers) {
            const std::size_t row_floats = task.out_w * task.channels;
            activate_avx2(task.out + row * row_floats, row_floats, task.activation);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
