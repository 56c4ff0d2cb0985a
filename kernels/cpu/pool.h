// Pooling over NHWC activations. Max pooling compares every window's taps that fall inside the
// image channel by channel, so padding never wins (PyTorch's rule), for u8, s8 and f32 data;
// average pooling sums float32 taps.
#pragma once

#include <cstddef>

#include "isa.h"

namespace nimbus::kernels {

enum class PoolElement { u8, s8, f32 };

struct PoolGeometry {
    std::size_t batch = 0;
    std::size_t height = 0;
    std::size_t width = 0;
    std::size_t channels = 0;
    std::size_t kernel_h = 1;
    std::size_t kernel_w = 1;
    std::size_t stride_h = 1;
    std::size_t stride_w = 1;
    std::size_t pad_top = 0;
    std::size_t pad_left = 0;
    std::size_t dilation_h = 1;
    std::size_t dilation_w = 1;
    std::size_t out_h = 0;  // chosen by the caller (floor or ceil mode)
    std::size_t out_w = 0;
};

// out[N, OH, OW, C] from x[N, H, W, C]; a window with no tap inside the image gives the type's
// lowest value (-inf for f32). Splits output rows over at most `threads` threads.
void max_pool2d(const void* x, PoolElement type, const PoolGeometry& geometry, void* out,
                std::size_t threads);

// out[N, OH, OW, C] = the average of each window of x[N, H, W, C] (float32) as the runtime's
// reference computes it: the taps summed in float32 in row-major order (a tap outside the image
// adds 0.0f), then divided by the number of taps inside the image, or, when count_include_pad,
// inside the image padded by pad_top, pad_bottom, pad_left and pad_right (taps past those, which
// ceil mode adds, never count). Dilation must be 1. Splits output rows over at most `threads`
// threads, vectorized on `isa`'s float path (sgemm_path).
void avg_pool2d(const float* x, const PoolGeometry& geometry, std::size_t pad_bottom,
                std::size_t pad_right, bool count_include_pad, float* out, std::size_t threads,
                Isa isa);

}  // namespace nimbus::kernels
