// Layout conversion for the channels-last kernels: a model's NCHW float input becomes NHWC once,
// before its first convolution (numpy's strided copy of a [8, 3, 224, 224] batch took 2.7 ms,
// half of the stem convolution's time).
#pragma once

#include <cstddef>

namespace nimbus::kernels {

// target[p, c] = planes[c * plane_stride + p] for `count` pixels and `channels` planes, on the
// calling thread. Three channels (an image) take a loop of fixed count, which the compiler
// vectorizes: 1.8-2x faster than the general one (on AVX-512, layout.cpp permutes 16 pixels at
// a time instead).
template <typename T>
void interleave_planes(const T* planes, std::size_t plane_stride, std::size_t channels,
                       std::size_t count, T* target) {
    if (channels == 3) {
        for (std::size_t p = 0; p < count; ++p) {
            for (std::size_t c = 0; c < 3; ++c) {
                target[p * 3 + c] = planes[c * plane_stride + p];
            }
        }
        return;
    }
    for (std::size_t c = 0; c < channels; ++c) {
        for (std::size_t p = 0; p < count; ++p) {
            target[p * channels + c] = planes[c * plane_stride + p];
        }
    }
}

// out[n, p, c] = x[n, c, p] for x [batch, channels, pixels], both contiguous, on at most
// `threads` threads; for float32 and for bytes (u8 or s8).
template <typename T>
void nchw_to_nhwc(const T* x, std::size_t batch, std::size_t channels, std::size_t pixels,
                  T* out, std::size_t threads);

}  // namespace nimbus::kernels
