#include "pool.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// The larger of a and b; NaN if either is NaN, as numpy.maximum and PyTorch's max pooling.
template <typename Element>
Element larger(Element a, Element b) {
    if constexpr (std::is_floating_point_v<Element>) {
        return b != b ? b : std::max(a, b);
    } else {
        return std::max(a, b);
    }
}

// One output row (n, oh): each output pixel starts at the lowest value and takes the running
// maximum of its taps, a loop over contiguous channels that the compiler vectorizes.
template <typename Element>
void pool_row(const Element* x, const PoolGeometry& g, std::size_t row, Element* out) {
    const std::size_t image = row / g.out_h;
    const std::size_t oh = row % g.out_h;
    const std::size_t c = g.channels;
    Element* target = out + row * g.out_w * c;
    std::fill(target, target + g.out_w * c, std::numeric_limits<Element>::has_infinity
                                                ? -std::numeric_limits<Element>::infinity()
                                                : std::numeric_limits<Element>::lowest());
    for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
        // Unsigned wrap-around makes a row above the image look like one past its end.
        const std::size_t ih = oh * g.stride_h + ky * g.dilation_h - g.pad_top;
        if (ih >= g.height) {
            continue;
        }
        const Element* line = x + (image * g.height + ih) * g.width * c;
        for (std::size_t ow = 0; ow < g.out_w; ++ow) {
            Element* pixel = target + ow * c;
            for (std::size_t kx = 0; kx < g.kernel_w; ++kx) {
                const std::size_t iw = ow * g.stride_w + kx * g.dilation_w - g.pad_left;
                if (iw >= g.width) {
                    continue;
                }
                const Element* tap = line + iw * c;
                for (std::size_t channel = 0; channel < c; ++channel) {
                    pixel[channel] = larger(pixel[channel], tap[channel]);
                }
            }
        }
    }
}

template <typename Element>
void pool_rows(const void* x, const PoolGeometry& g, void* out, std::size_t threads) {
    parallel_for(g.batch * g.out_h, threads, [&](std::size_t row) {
        pool_row(static_cast<const Element*>(x), g, row, static_cast<Element*>(out));
    });
}

}  // namespace

void max_pool2d(const void* x, PoolElement type, const PoolGeometry& geometry, void* out,
                std::size_t threads) {
    if (geometry.batch * geometry.out_h * geometry.out_w * geometry.channels == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    switch (type) {
        case PoolElement::u8:
            pool_rows<std::uint8_t>(x, geometry, out, threads);
            break;
        case PoolElement::s8:
            pool_rows<std::int8_t>(x, geometry, out, threads);
            break;
        case PoolElement::f32:
            pool_rows<float>(x, geometry, out, threads);
            break;
    }
}

}  // namespace nimbus::kernels
