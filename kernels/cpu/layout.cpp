// NCHW -> NHWC in blocks of pixels: each block reads a contiguous run of every channel plane
// and writes its interleaved pixels, both of which stay in L1.
#include "layout.h"

#include <algorithm>

#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// Pixels per block: kBlockFloats floats of output, at least one pixel.
constexpr std::size_t kBlockFloats = 4096;

}  // namespace

void nchw_to_nhwc(const float* x, std::size_t batch, std::size_t channels, std::size_t pixels,
                  float* out, std::size_t threads) {
    if (batch * channels * pixels == 0) {
        return;
    }
    const std::size_t block = std::max<std::size_t>(kBlockFloats / channels, 1);
    const std::size_t blocks_per_image = (pixels + block - 1) / block;
    parallel_for(batch * blocks_per_image, threads, [&](std::size_t item) {
        const std::size_t image = item / blocks_per_image;
        const std::size_t first = item % blocks_per_image * block;
        const std::size_t count = std::min(block, pixels - first);
        interleave_planes(x + image * channels * pixels + first, pixels, channels, count,
                          out + (image * pixels + first) * channels);
    });
}

}  // namespace nimbus::kernels
