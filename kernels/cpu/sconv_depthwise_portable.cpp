// The portable path of the float32 depthwise convolution: plain C++ over one output pixel at a
// time, channels innermost so that the compiler vectorizes the tap loop for the baseline ISA.
#include <algorithm>
#include <vector>

#include "depthwise.h"
#include "sgemm_paths.h"

namespace nimbus::kernels {

void run_sdepthwise_portable(const SDepthwiseTask& task, std::size_t row_begin,
                             std::size_t row_end) {
    const std::size_t channels = task.channels;
    std::vector<float> acc(channels);
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const std::size_t image = row / task.out_h;
        const std::size_t oh = row % task.out_h;
        const auto top = static_cast<std::ptrdiff_t>(oh * task.stride_h) -
                         static_cast<std::ptrdiff_t>(task.pad_top);
        const TapRange rows = taps_inside(top, task.kernel_h, task.dilation_h, task.height);
        for (std::size_t ow = 0; ow < task.out_w; ++ow) {
            const auto left = static_cast<std::ptrdiff_t>(ow * task.stride_w) -
                              static_cast<std::ptrdiff_t>(task.pad_left);
            const TapRange cols = taps_inside(left, task.kernel_w, task.dilation_w, task.width);
            std::copy(task.bias, task.bias + channels, acc.begin());
            for (std::size_t ky = rows.begin; ky < rows.end; ++ky) {
                const std::size_t ih = static_cast<std::size_t>(top) + ky * task.dilation_h;
                for (std::size_t kx = cols.begin; kx < cols.end; ++kx) {
                    const std::size_t iw = static_cast<std::size_t>(left) + kx * task.dilation_w;
                    const float* __restrict pixel =
                        task.x + ((image * task.height + ih) * task.width + iw) * channels;
                    const float* __restrict w =
                        task.weights + (ky * task.kernel_w + kx) * task.padded_channels;
                    float* __restrict sums = acc.data();
                    for (std::size_t c = 0; c < channels; ++c) {
                        sums[c] += pixel[c] * w[c];
                    }
                }
            }
            const std::size_t index = (row * task.out_w + ow) * channels;
            if (task.residual != nullptr) {
                for (std::size_t c = 0; c < channels; ++c) {
                    acc[c] += task.residual[index + c];
                }
            }
            if (task.activation != Activation::none) {
                activate_portable(acc.data(), channels, task.activation);
            }
            std::copy(acc.begin(), acc.end(), task.out + index);
        }
    }
}

}  // namespace nimbus::kernels
