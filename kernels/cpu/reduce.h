// Means over one axis of float32 data, summed in float64 like the runtime's numpy reductions: a
// global average pool over the pixels of NHWC memory ([N, H * W, C]), or over the rows of NCHW
// memory ([N * C, H * W, 1]).
#pragma once

#include <cstddef>

#include "isa.h"

namespace nimbus::kernels {

// out[o, i] = f32(sum_l f64(x[o, l, i]) / length) for x [outer, length, inner], contiguous;
// split over at most `threads` threads (by slices of `outer`, or by shares of `inner` when
// there are fewer slices than threads), on `isa`'s float path (sgemm_path). length >= 1.
void mean_axis(const float* x, std::size_t outer, std::size_t length, std::size_t inner,
               float* out, std::size_t threads, Isa isa);

}  // namespace nimbus::kernels
