// Layout conversion for the channels-last kernels: a model's NCHW float input becomes NHWC once,
// before its first convolution (numpy's strided copy of a [8, 3, 224, 224] batch took 2.7 ms,
// half of the stem convolution's time).
#pragma once

#include <cstddef>

namespace nimbus::kernels {

// out[n, p, c] = x[n, c, p] for x [batch, channels, pixels], both contiguous, on at most
// `threads` threads.
void nchw_to_nhwc(const float* x, std::size_t batch, std::size_t channels, std::size_t pixels,
                  float* out, std::size_t threads);

}  // namespace nimbus::kernels
