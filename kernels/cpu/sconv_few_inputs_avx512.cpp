// The AVX-512 direct float32 convolution over few input channels (sconv_direct.h). Each
// input row that a window reads is copied once, NHWC, into a zero-padded scratch row, kept while
// later output rows read it; a window's kernel row is then kernel_w * C adjacent floats there,
// whatever the stride, and no pixel needs a bounds check. A chunk of pixels x up to 4 vectors of
// 16 output channels stays in 24 accumulators: per tap, the weights of all outputs are loaded
// once and each pixel's input broadcast to them. Kernel rows that fall in the vertical padding
// are skipped. The finished accumulators are already NHWC: the residual is added and relu /
// relu6 clamp them on the way to the store; the other activations run over the finished output
// row (activate_avx512), still in L1.
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "sconv_direct.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "sgemm_paths.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = kSconvFewInputsVector;
constexpr std::size_t kAccumulators = 24;
constexpr std::size_t kMaxVectors = kSconvFewInputsMaxOutputs / kLanes;

// Pixels per chunk for `vectors` vectors of outputs: as many as the accumulators hold.
constexpr std::size_t chunk_pixels(std::size_t vectors) { return kAccumulators / vectors; }

// Zero-padded NHWC copies of the input rows that the windows of recent output rows read.
// Padded input row r (r - pad_top in the image) lives in slot r % kernel_h: the rows of one
// window are kernel_h consecutive r, so they never share a slot, and the next output rows find
// the rows they share with this one still there.
class PaddedRows {
public:
    // `pixels`: padded pixels per row, enough for the windows of every pixel of every chunk
    // (the last chunk computes whole, past out_w) and for the image row after pad_left.
    PaddedRows(const SconvDirectTask& t, std::size_t pixels)
        : t_(t), g_(*t.geometry), row_floats_(pixels * g_.channels) {
        // Per-thread buffers kept between calls: a call may be a few output rows.
        thread_local std::vector<float> storage;
        thread_local std::vector<std::size_t> tags;
        thread_local std::vector<const float*> window;
        storage.resize(t.kernel_h * row_floats_);
        tags.assign(t.kernel_h, kEmpty);
        window.resize(t.kernel_h);
        data_ = storage.data();
        tags_ = tags.data();
        window_ = window.data();
    }

    // The padded rows that output row `index` of N * OH reads, one per kernel row; those of
    // kernel rows outside [ky_begin, ky_end) (the vertical padding) are left unset.
    const float* const* window(std::size_t index, std::size_t& ky_begin, std::size_t& ky_end) {
        const std::size_t image = index / g_.out_h;
        const std::size_t top = index % g_.out_h * g_.stride_h;  // in padded rows
        const std::size_t bottom = g_.pad_top + g_.height;  // padded rows past the image
        ky_begin = top < g_.pad_top ? g_.pad_top - top : 0;
        ky_end = top < bottom ? std::min(t_.kernel_h, bottom - top) : 0;
        for (std::size_t ky = ky_begin; ky < ky_end; ++ky) {
            window_[ky] = row(image, top + ky);
        }
        return window_;
    }

private:
    static constexpr std::size_t kEmpty = SIZE_MAX;

    const float* row(std::size_t image, std::size_t r) {
        const std::size_t slot = r % t_.kernel_h;
        float* padded = data_ + slot * row_floats_;
        const std::size_t tag = image * (g_.pad_top + g_.height) + r;
        if (tags_[slot] != tag) {
            tags_[slot] = tag;
            const std::size_t ih = r - g_.pad_top;
            const float* source = t_.x + (image * g_.height + ih) * g_.width * g_.channels;
            const std::size_t left = g_.pad_left * g_.channels;
            const std::size_t length = g_.width * g_.channels;
            std::fill(padded, padded + left, 0.0f);
            std::copy(source, source + length, padded + left);
            std::fill(padded + left + length, padded + row_floats_, 0.0f);
        }
        return padded;
    }

    const SconvDirectTask& t_;
    const ConvGeometry& g_;
    std::size_t row_floats_;
    float* data_;
    std::size_t* tags_;
    const float** window_;
};

// Output pixels [ow, ow + pixels) of one row (pixels <= chunk_pixels(Vectors); the chunk is
// computed whole) from the padded rows of its window.
template <std::size_t Vectors>
NIMBUS_AVX512F void compute_chunk(const SconvDirectTask& t, const float* const* rows,
                                  std::size_t ky_begin, std::size_t ky_end, std::size_t ow,
                                  std::size_t pixels, const float* residual, float* out) {
    constexpr std::size_t kPixels = chunk_pixels(Vectors);
    const ConvGeometry& g = *t.geometry;
    const std::size_t outputs = t.out_channels;
    const std::size_t step = g.stride_w * g.channels;  // floats between adjacent windows
    const std::size_t window = t.kernel_w * g.channels;
    __m512 acc[kPixels][Vectors];
#pragma GCC unroll 4
    for (std::size_t v = 0; v < Vectors; ++v) {
        const __m512 bias = t.bias != nullptr
                                ? _mm512_maskz_loadu_ps(first_lanes(outputs - v * kLanes),
                                                        t.bias + v * kLanes)
                                : _mm512_setzero_ps();
#pragma GCC unroll 24
        for (std::size_t p = 0; p < kPixels; ++p) {
            acc[p][v] = bias;
        }
    }
    for (std::size_t ky = ky_begin; ky < ky_end; ++ky) {
        const float* line = rows[ky] + ow * step;
        const float* w = t.weights + ky * window * Vectors * kLanes;
        for (std::size_t i = 0; i < window; ++i, w += Vectors * kLanes) {
            __m512 weights[Vectors];
#pragma GCC unroll 4
            for (std::size_t v = 0; v < Vectors; ++v) {
                weights[v] = _mm512_loadu_ps(w + v * kLanes);
            }
#pragma GCC unroll 24
            for (std::size_t p = 0; p < kPixels; ++p) {
                const __m512 input = _mm512_set1_ps(line[p * step + i]);
#pragma GCC unroll 4
                for (std::size_t v = 0; v < Vectors; ++v) {
                    acc[p][v] = _mm512_fmadd_ps(input, weights[v], acc[p][v]);
                }
            }
        }
    }
    const bool relu = t.activation == Activation::relu || t.activation == Activation::relu6;
    const bool relu6 = t.activation == Activation::relu6;
#pragma GCC unroll 24
    for (std::size_t p = 0; p < kPixels; ++p) {
        if (p >= pixels) {
            break;
        }
        const std::size_t offset = (ow + p) * outputs;
#pragma GCC unroll 4
        for (std::size_t v = 0; v < Vectors; ++v) {
            const __mmask16 mask = first_lanes(outputs - v * kLanes);
            __m512 value = acc[p][v];
            if (residual != nullptr) {
                value = _mm512_add_ps(
                    value, _mm512_maskz_loadu_ps(mask, residual + offset + v * kLanes));
            }
            if (relu) {
                value = _mm512_max_ps(_mm512_setzero_ps(), value);
            }
            if (relu6) {
                value = _mm512_min_ps(_mm512_set1_ps(6.0f), value);
            }
            _mm512_mask_storeu_ps(out + offset + v * kLanes, mask, value);
        }
    }
}

using ChunkKernel = void (*)(const SconvDirectTask&, const float* const*, std::size_t,
                             std::size_t, std::size_t, std::size_t, const float*, float*);

// Indexed by vectors - 1.
constexpr std::array<ChunkKernel, kMaxVectors> kChunkKernels = {
    compute_chunk<1>, compute_chunk<2>, compute_chunk<3>, compute_chunk<4>};

}  // namespace

void run_sconv_few_inputs_avx512(const SconvDirectTask& task, std::size_t row_begin,
                                 std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const std::size_t outputs = task.out_channels;
    const std::size_t vectors = (outputs + kLanes - 1) / kLanes;
    const std::size_t pixels = chunk_pixels(vectors);
    const std::size_t chunks = (g.out_w + pixels - 1) / pixels;
    PaddedRows padded(task, std::max((chunks * pixels - 1) * g.stride_w + task.kernel_w,
                                     g.pad_left + g.width));
    const ChunkKernel kernel = kChunkKernels[vectors - 1];
    const std::size_t row_floats = g.out_w * outputs;
    for (std::size_t index = row_begin; index < row_end; ++index) {
        std::size_t ky_begin = 0;
        std::size_t ky_end = 0;
        const float* const* rows = padded.window(index, ky_begin, ky_end);
        float* out = task.out + index * row_floats;
        const float* residual =
            task.residual == nullptr ? nullptr : task.residual + index * row_floats;
        for (std::size_t ow = 0; ow < g.out_w; ow += pixels) {
            kernel(task, rows, ky_begin, ky_end, ow, std::min(pixels, g.out_w - ow), residual,
                   out);
        }
        if (!clamps_in_registers(task.activation)) {
            activate_avx512(out, row_floats, task.activation);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
