// NCHW -> NHWC in blocks of pixels: each block reads a contiguous run of every channel plane
// and writes its interleaved pixels, both of which stay in L1.
#include "layout.h"

#include <algorithm>
#include <cstdint>

#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// Pixels per block: kBlockBytes of output, at least one pixel.
constexpr std::size_t kBlockBytes = 16384;

}  // namespace

template <typename T>
void nchw_to_nhwc(const T* x, std::size_t batch, std::size_t channels, std::size_t pixels,
                  T* out, std::size_t threads) {
    if (batch * channels * pixels == 0) {
        return;
    }
    const std::size_t block = std::max<std::size_t>(kBlockBytes / sizeof(T) / channels, 1);
    const std::size_t blocks_per_image = (pixels + block - 1) / block;
    parallel_for(batch * blocks_per_image, threads, [&](std::size_t item) {
        const std::size_t image = item / blocks_per_image;
        const std::size_t first = item % blocks_per_image * block;
        const std::size_t count = std::min(block, pixels - first);
        interleave_planes(x + image * channels * pixels + first, pixels, channels, count,
                          out + (image * pixels + first) * channels);
    });
}

template void nchw_to_nhwc<float>(const float*, std::size_t, std::size_t, std::size_t, float*,
                                  std::size_t);
template void nchw_to_nhwc<std::uint8_t>(const std::uint8_t*, std::size_t, std::size_t,
                                         std::size_t, std::uint8_t*, std::size_t);

}  // namespace nimbus::kernels
