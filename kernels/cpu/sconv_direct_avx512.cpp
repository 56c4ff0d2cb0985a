// The AVX-512 direct float32 convolution for few output channels (sconv_direct.h). Each input
// row that a window reads is copied once into a planar, zero-padded scratch row per channel
// (PlanarRows), kept while later output rows read it. A chunk of 16 adjacent output pixels then
// loads 16 inputs per tap with one unaligned load and adds them times the tap's weight of each
// output channel, broadcast, to one accumulator per channel. The finished
// accumulators hold channels in separate vectors; permutes interleave them into NHWC pixels
// before the residual is added and relu / relu6 clamp them on the way to the store. The other
// activations run over the finished output row (activate_avx512), still in L1.
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "sconv_direct.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "interleave_avx512.h"
#include "sgemm_paths.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;

// Planar copies of the input rows that the windows of recent output rows read, each
// [C][row_length] with the left padding, the row and zeros up to row_length. Padded input row r
// (r - pad_top in the image) lives in slot r % slots: the KH rows of one window span at most
// `slots` consecutive r, so they never share a slot, and the next output rows find the rows
// they share with this one still there.
class PlanarRows {
public:
    // The rows live in per-thread buffers kept between calls: a call may be a few output rows.
    explicit PlanarRows(const SconvDirectTask& t)
        : t_(t),
          g_(*t.geometry),
          // Chunks of 16 output pixels read up to the last one's window past the padded row.
          row_length_((g_.out_w + kLanes - 1) / kLanes * kLanes +
                      (t.kernel_w - 1) * g_.dilation_w),
          slots_((t.kernel_h - 1) * g_.dilation_h + 1) {
        thread_local std::vector<float> storage;
        thread_local std::vector<std::size_t> tags;
        thread_local std::vector<const float*> window;
        storage.resize(slots_ * g_.channels * row_length_);
        tags.assign(slots_, kEmpty);
        window.resize(t.kernel_h);
        data_ = storage.data();
        tags_ = tags.data();
        window_ = window.data();
    }

    std::size_t row_length() const { return row_length_; }

    // The planar rows that output row `index` of N * OH reads, one per kernel row.
    const float* const* window(std::size_t index) {
        const std::size_t image = index / g_.out_h;
        const std::size_t top = index % g_.out_h * g_.stride_h;
        for (std::size_t ky = 0; ky < t_.kernel_h; ++ky) {
            window_[ky] = row(image, top + ky * g_.dilation_h);
        }
        return window_;
    }

private:
    static constexpr std::size_t kEmpty = SIZE_MAX;

    // The planar row of padded input row r of image `image`, copied on first use.
    const float* row(std::size_t image, std::size_t r) {
        const std::size_t slot = r % slots_;
        float* planar = data_ + slot * g_.channels * row_length_;
        const std::size_t tag = image * (g_.pad_top + g_.height + g_.pad_bottom) + r;
        if (tags_[slot] != tag) {
            tags_[slot] = tag;
            fill(planar, image, r - g_.pad_top);
        }
        return planar;
    }

    // ih may have wrapped below zero: then, like past the image, the row is all padding.
    void fill(float* planar, std::size_t image, std::size_t ih) const {
        const std::size_t left = g_.pad_left;
        if (ih >= g_.height) {
            std::fill(planar, planar + g_.channels * row_length_, 0.0f);
            return;
        }
        const float* source = t_.x + (image * g_.height + ih) * g_.width * g_.channels;
        for (std::size_t c = 0; c < g_.channels; ++c) {
            float* target = planar + c * row_length_;
            std::fill(target, target + left, 0.0f);
            for (std::size_t iw = 0; iw < g_.width; ++iw) {
                target[left + iw] = source[iw * g_.channels + c];
            }
            std::fill(target + left + g_.width, target + row_length_, 0.0f);
        }
    }

    const SconvDirectTask& t_;
    const ConvGeometry& g_;
    std::size_t row_length_;
    std::size_t slots_;
    float* data_;
    std::size_t* tags_;
    const float** window_;
};

// Adds the residual to the first `pixels` pixels of acc, clamps them for relu / relu6 and stores
// them to out, both NHWC.
template <std::size_t Outputs>
NIMBUS_AVX512F inline void store_pixels(const __m512 (&acc)[Outputs], std::size_t pixels,
                                        const float* residual, Activation activation,
                                        float* out) {
    const bool relu = activation == Activation::relu || activation == Activation::relu6;
    const bool relu6 = activation == Activation::relu6;
    const std::size_t count = pixels * Outputs;
#pragma GCC unroll 8
    for (std::size_t j = 0; j < Outputs; ++j) {
        if (j * kLanes >= count) {
            break;
        }
        __m512 value = interleaved_ps(acc, j);
        const __mmask16 mask = first_lanes(count - j * kLanes);
        if (residual != nullptr) {
            value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, residual + j * kLanes));
        }
        if (relu) {
            value = _mm512_max_ps(_mm512_setzero_ps(), value);
        }
        if (relu6) {
            value = _mm512_min_ps(_mm512_set1_ps(6.0f), value);
        }
        _mm512_mask_storeu_ps(out + j * kLanes, mask, value);
    }
}

// Output pixels [ow, ow + pixels) of one row, pixels <= 16 * Chunks, from the planar rows of
// its window (rows[ky], each [C][row_length]). Two chunks share each broadcast weight and give
// few output channels enough independent accumulators to hide the latency of the FMA.
template <std::size_t Outputs, std::size_t Chunks>
NIMBUS_AVX512F void compute_pixels(const SconvDirectTask& t, const float* const* rows,
                                   std::size_t row_length, std::size_t ow, std::size_t pixels,
                                   const float* residual, float* out) {
    const ConvGeometry& g = *t.geometry;
    __m512 acc[Chunks][Outputs];
#pragma GCC unroll 8
    for (std::size_t o = 0; o < Outputs; ++o) {
        const __m512 bias = t.bias != nullptr ? _mm512_set1_ps(t.bias[o]) : _mm512_setzero_ps();
#pragma GCC unroll 2
        for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
            acc[chunk][o] = bias;
        }
    }
    const float* w = t.weights;
    for (std::size_t ky = 0; ky < t.kernel_h; ++ky) {
        for (std::size_t c = 0; c < g.channels; ++c) {
            const float* line = rows[ky] + c * row_length + ow;
            for (std::size_t kx = 0; kx < t.kernel_w; ++kx, w += Outputs) {
                const float* x = line + kx * g.dilation_w;
                __m512 value[Chunks];
#pragma GCC unroll 2
                for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
                    value[chunk] = _mm512_loadu_ps(x + chunk * kLanes);
                }
#pragma GCC unroll 8
                for (std::size_t o = 0; o < Outputs; ++o) {
                    const __m512 weight = _mm512_set1_ps(w[o]);
#pragma GCC unroll 2
                    for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
                        acc[chunk][o] = _mm512_fmadd_ps(value[chunk], weight, acc[chunk][o]);
                    }
                }
            }
        }
    }
#pragma GCC unroll 2
    for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
        const std::size_t first = chunk * kLanes;
        const std::size_t offset = (ow + first) * Outputs;
        store_pixels<Outputs>(acc[chunk], std::min(kLanes, pixels - first),
                              residual == nullptr ? nullptr : residual + offset, t.activation,
                              out + offset);
    }
}

using PixelKernel = void (*)(const SconvDirectTask&, const float* const*, std::size_t,
                             std::size_t, std::size_t, const float*, float*);

template <std::size_t Chunks, std::size_t... Outputs>
constexpr std::array<PixelKernel, sizeof...(Outputs)> pixel_kernels(
    std::index_sequence<Outputs...>) {
    return {compute_pixels<Outputs + 1, Chunks>...};
}

// compute_pixels for 1 to kSconvDirectMaxOutputs channels (indexed by channels - 1), one chunk
// or two (indexed by chunks - 1).
constexpr std::array<PixelKernel, kSconvDirectMaxOutputs> kPixelKernels[2] = {
    pixel_kernels<1>(std::make_index_sequence<kSconvDirectMaxOutputs>()),
    pixel_kernels<2>(std::make_index_sequence<kSconvDirectMaxOutputs>())};

}  // namespace

void run_sconv_direct_avx512(const SconvDirectTask& task, std::size_t row_begin,
                             std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const std::size_t outputs = task.out_channels;
    const std::size_t row_floats = g.out_w * outputs;
    PlanarRows planar(task);
    for (std::size_t index = row_begin; index < row_end; ++index) {
        const float* const* rows = planar.window(index);
        float* out = task.out + index * row_floats;
        const float* residual =
            task.residual == nullptr ? nullptr : task.residual + index * row_floats;
        std::size_t ow = 0;
        for (; ow + kLanes < g.out_w; ow += 2 * kLanes) {
            kPixelKernels[1][outputs - 1](task, rows, planar.row_length(), ow,
                                          std::min(2 * kLanes, g.out_w - ow), residual, out);
        }
        if (ow < g.out_w) {
            kPixelKernels[0][outputs - 1](task, rows, planar.row_length(), ow,
                                          g.out_w - ow, residual, out);
        }
        if (!clamps_in_registers(task.activation)) {
            activate_avx512(out, row_floats, task.activation);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
