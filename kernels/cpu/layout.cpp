// NCHW -> NHWC in blocks of pixels: each block reads a contiguous run of every channel plane
// and writes its interleaved pixels, both of which stay in L1.
#include "layout.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "interleave_avx512.h"
#include "isa.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// Pixels per block: kBlockBytes of output, at least one pixel.
constexpr std::size_t kBlockBytes = 16384;

#ifdef NIMBUS_X86_KERNELS
// interleave_planes of three float planes, 16 pixels at a time by permutes (interleave_avx512.h):
// a float [1, 3, 224, 224] image, MobileNetV2's and ResNet's input, took 0.035-0.045 ms on two
// threads through the compiler's baseline vectors, ahead of a 0.1 ms stem.
NIMBUS_AVX512F void interleave_rgb_avx512(const float* planes, std::size_t plane_stride,
                                          std::size_t count, float* target) {
    std::size_t p = 0;
    for (; p + kInterleaveLanes <= count; p += kInterleaveLanes) {
        const __m512 channels[3] = {_mm512_loadu_ps(planes + p),
                                    _mm512_loadu_ps(planes + plane_stride + p),
                                    _mm512_loadu_ps(planes + 2 * plane_stride + p)};
#pragma GCC unroll 3
        for (std::size_t j = 0; j < 3; ++j) {
            _mm512_storeu_ps(target + 3 * p + j * kInterleaveLanes, interleaved_ps(channels, j));
        }
    }
    interleave_planes(planes + p, plane_stride, 3, count - p, target + 3 * p);
}
#endif

// interleave_planes on the selected path.
template <typename T>
void interleave_block(const T* planes, std::size_t plane_stride, std::size_t channels,
                      std::size_t count, T* target) {
#ifdef NIMBUS_X86_KERNELS
    if constexpr (std::is_same_v<T, float>) {
        if (channels == 3 && vector_isa(selected_isa()) == Isa::avx512_vnni) {
            interleave_rgb_avx512(planes, plane_stride, count, target);
            return;
        }
    }
#endif
    interleave_planes(planes, plane_stride, channels, count, target);
}

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
        interleave_block(x + image * channels * pixels + first, pixels, channels, count,
                         out + (image * pixels + first) * channels);
    });
}

template void nchw_to_nhwc<float>(const float*, std::size_t, std::size_t, std::size_t, float*,
                                  std::size_t);
template void nchw_to_nhwc<std::uint8_t>(const std::uint8_t*, std::size_t, std::size_t,
                                         std::size_t, std::uint8_t*, std::size_t);

}  // namespace nimbus::kernels
