// Max pooling over NHWC activations: every window's taps that fall inside the image are compared
// channel by channel, so padding never wins (PyTorch's rule), for u8, s8 and f32 data.
#pragma once

#include <cstddef>

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

}  // namespace nimbus::kernels
