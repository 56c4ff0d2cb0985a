// The portable path of the depthwise convolution: plain C++ over one output pixel at a time,
// channels innermost so that the compiler vectorizes the tap loop for the baseline ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "depthwise.h"

namespace nimbus::kernels {
namespace {

// Writes the finished value of channel `channel` at `index` of the output.
void store_value(const DepthwiseTask& task, std::size_t index, std::size_t channel,
                 std::int32_t raw) {
    const auto wrapped = static_cast<std::uint32_t>(raw) +
                         static_cast<std::uint32_t>(task.bias[channel]);
    store_epilogue(task.type, task.out, index, static_cast<std::int32_t>(wrapped),
                   task.scale != nullptr ? task.scale[channel] : 0.0f, task.zero_point, task.lo,
                   task.hi);
}


template <typename Element>
void run_rows(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const auto* x = static_cast<const Element*>(task.x);
    const std::size_t channels = g.channels;
    std::vector<std::int32_t> acc(channels);
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const std::size_t image = row / g.out_h;
        const std::size_t oh = row % g.out_h;
        const auto top = static_cast<std::ptrdiff_t>(oh * g.stride_h) -
                         static_cast<std::ptrdiff_t>(g.pad_top);
        const TapRange rows = taps_inside(top, task.kernel_h, g.dilation_h, g.height);
        for (std::size_t ow = 0; ow < g.out_w; ++ow) {
            const auto left = static_cast<std::ptrdiff_t>(ow * g.stride_w) -
                              static_cast<std::ptrdiff_t>(g.pad_left);
            const TapRange cols = taps_inside(left, task.kernel_w, g.dilation_w, g.width);
            std::fill(acc.begin(), acc.end(), 0);
            for (std::size_t ky = rows.begin; ky < rows.end; ++ky) {
                const std::size_t ih = static_cast<std::size_t>(top) + ky * g.dilation_h;
                for (std::size_t kx = cols.begin; kx < cols.end; ++kx) {
                    const std::size_t iw = static_cast<std::size_t>(left) + kx * g.dilation_w;
                    const Element* pixel = x + ((image * g.height + ih) * g.width + iw) * channels;
                    const std::int32_t* w =
                        task.weights + (ky * task.kernel_w + kx) * task.padded_channels;
                    for (std::size_t c = 0; c < channels; ++c) {
                        const std::int32_t weight = static_cast<std::int16_t>(w[c]);
                        acc[c] += (static_cast<std::int32_t>(pixel[c]) - task.x_zero_point) *
                                  weight;
                    }
                }
            }
            const std::size_t out_index = (row * g.out_w + ow) * channels;
            for (std::size_t c = 0; c < channels; ++c) {
                store_value(task, out_index + c, c, acc[c]);
            }
        }
    }
}

}  // namespace

TapRange taps_inside(std::ptrdiff_t origin, std::size_t kernel, std::size_t dilation,
                     std::size_t size) {
    const auto step = static_cast<std::ptrdiff_t>(dilation);
    std::size_t begin = 0;
    if (origin < 0) {
        begin = static_cast<std::size_t>((-origin + step - 1) / step);
    }
    std::size_t end = kernel;
    while (end > begin && origin + static_cast<std::ptrdiff_t>((end - 1) * dilation) >=
                              static_cast<std::ptrdiff_t>(size)) {
        --end;
    }
    return {std::min(begin, kernel), std::max(end, std::min(begin, kernel))};
}

void run_depthwise_portable(const DepthwiseTask& task, std::size_t row_begin,
                            std::size_t row_end) {
    if (task.x_signed) {
        run_rows<std::int8_t>(task, row_begin, row_end);
    } else {
        run_rows<std::uint8_t>(task, row_begin, row_end);
    }
}

}  // namespace nimbus::kernels
