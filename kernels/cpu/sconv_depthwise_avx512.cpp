// The AVX-512 path of the float32 depthwise convolution, over one output row at a time and 16
// channels at a time. Pixels whose window lies inside the image horizontally go in strips of
// kStrip, then 4, 2 and 1: each tap's weight vector is loaded once for the strip, so the kernel
// does about one activation load per FMA instead of two. Edge pixels take the taps inside the
// image one pixel at a time, up to four vectors of channels together. The epilogue (bias as
// the starting value, residual, relu/relu6) runs on the registers with masked loads and stores
// past the last channel; other activations run over the finished output row
// (activate_avx512). While computing a row, the kernel prefetches what the next row of its
// range touches first (NextRow).
//
// Only functions marked NIMBUS_AVX512F use AVX-512 (see qgemm_avx512_vnni.cpp).
#include <algorithm>
#include <cstdint>

#include "depthwise.h"
#include "sgemm_paths.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;
constexpr std::size_t kStrip = 8;
constexpr std::size_t kCacheLine = 64;

// GCC 12 at -O2 deletes a loop whose only statements are _mm_prefetch (it assumes the loop
// finite and without effects), so the prefetches are asm statements. Every AVX-512 CPU has
// prefetchw.
inline void prefetch_read(const char* p) { asm volatile("prefetcht0 %0" : : "m"(*p)); }
inline void prefetch_write(const char* p) { asm volatile("prefetchw %0" : : "m"(*p)); }

// One output row: the image it reads, the kernel rows inside the image, and where the row's
// outputs and residuals start.
struct Row {
    const float* image;  // x[n]
    std::size_t top;     // input row of kernel row 0 (may have wrapped below zero)
    TapRange rows;
    float* out;          // out[n, oh, 0, 0]
    const float* residual;
};

// Finishes `Pixels` accumulators of one vector of channels of consecutive output pixels, the
// first at `out` (and `residual`, when not null).
template <std::size_t Pixels>
NIMBUS_AVX512F inline void store_pixels(const SDepthwiseTask& t, float* out,
                                        const float* residual, __mmask16 mask,
                                        __m512 (&acc)[Pixels]) {
    const bool relu = t.activation == Activation::relu || t.activation == Activation::relu6;
    const bool relu6 = t.activation == Activation::relu6;
#pragma GCC unroll 8
    for (std::size_t p = 0; p < Pixels; ++p) {
        __m512 value = acc[p];
        if (residual != nullptr) {
            value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, residual + p * t.channels));
        }
        if (relu) {
            value = _mm512_max_ps(_mm512_setzero_ps(), value);
        }
        if (relu6) {
            value = _mm512_min_ps(_mm512_set1_ps(6.0f), value);
        }
        _mm512_mask_storeu_ps(out + p * t.channels, mask, value);
    }
}

// Where the windows of a strip of output pixels start (channel 0) and how they go on, worked
// out once for every vector of channels: worked out per vector, with the loops indexing from
// the task, they made the float depthwise layers of MobileNetV2 12-17% slower.
struct StripWindows {
    const float* input;  // pixel 0's window: its first kernel row inside the image, column 0
    std::size_t pixel_step;
    std::size_t row_step;
    std::size_t column_step;
    const float* weights;  // of the first kernel row inside the image, column 0
    std::size_t weight_row_step;
    std::size_t kernel_rows;
    float* out;              // pixel 0
    const float* residual;   // pixel 0, or null
};

// `Pixels` consecutive output pixels, every tap of whose windows lies inside the image
// horizontally, over channels [channel, channel + 16). Full vectors of channels take plain
// loads, which are cheaper.
template <std::size_t Pixels, bool Masked>
NIMBUS_AVX512F inline void compute_strip(const SDepthwiseTask& t, const StripWindows& s,
                                         std::size_t channel, __mmask16 mask) {
    __m512 acc[Pixels];
    const __m512 bias = _mm512_loadu_ps(t.bias + channel);
#pragma GCC unroll 8
    for (std::size_t p = 0; p < Pixels; ++p) {
        acc[p] = bias;
    }
    const float* line = s.input + channel;
    const float* w_row = s.weights + channel;
    for (std::size_t ky = 0; ky < s.kernel_rows;
         ++ky, line += s.row_step, w_row += s.weight_row_step) {
        const float* x = line;
        const float* w_tap = w_row;
        for (std::size_t kx = 0; kx < t.kernel_w;
             ++kx, x += s.column_step, w_tap += t.padded_channels) {
            const __m512 w = _mm512_loadu_ps(w_tap);
#pragma GCC unroll 8
            for (std::size_t p = 0; p < Pixels; ++p) {
                const __m512 value = Masked ? _mm512_maskz_loadu_ps(mask, x + p * s.pixel_step)
                                            : _mm512_loadu_ps(x + p * s.pixel_step);
                acc[p] = _mm512_fmadd_ps(value, w, acc[p]);
            }
        }
    }
    store_pixels<Pixels>(t, s.out + channel,
                         s.residual == nullptr ? nullptr : s.residual + channel, mask, acc);
}

// One output pixel over `Vectors` vectors of channels from `channel`, over the taps of its
// window that lie inside the image. Several vectors give the multiply-adds of each tap
// independent chains: one vector at a time waited for each one's latency.
template <std::size_t Vectors>
NIMBUS_AVX512F void compute_pixel(const SDepthwiseTask& t, const Row& row, std::size_t ow,
                                  std::size_t channel, __mmask16 mask) {
    const auto left = static_cast<std::ptrdiff_t>(ow * t.stride_w) -
                      static_cast<std::ptrdiff_t>(t.pad_left);
    const TapRange cols = taps_inside(left, t.kernel_w, t.dilation_w, t.width);
    __m512 acc[Vectors][1];  // one pixel per vector, as store_pixels takes them
#pragma GCC unroll 4
    for (std::size_t v = 0; v < Vectors; ++v) {
        acc[v][0] = _mm512_loadu_ps(t.bias + channel + v * kLanes);
    }
    for (std::size_t ky = row.rows.begin; ky < row.rows.end; ++ky) {
        const float* line =
            row.image + (row.top + ky * t.dilation_h) * t.width * t.channels + channel;
        const float* w_row = t.weights + ky * t.kernel_w * t.padded_channels + channel;
        for (std::size_t kx = cols.begin; kx < cols.end; ++kx) {
            const float* x =
                line + (static_cast<std::size_t>(left) + kx * t.dilation_w) * t.channels;
            const float* w = w_row + kx * t.padded_channels;
#pragma GCC unroll 4
            for (std::size_t v = 0; v < Vectors; ++v) {
                // Only a last, lone vector is masked (mask is all lanes for several).
                const __m512 value = Vectors == 1 ? _mm512_maskz_loadu_ps(mask, x)
                                                  : _mm512_loadu_ps(x + v * kLanes);
                acc[v][0] = _mm512_fmadd_ps(value, _mm512_loadu_ps(w + v * kLanes), acc[v][0]);
            }
        }
    }
    const std::size_t first = ow * t.channels + channel;
#pragma GCC unroll 4
    for (std::size_t v = 0; v < Vectors; ++v) {
        store_pixels<1>(t, row.out + first + v * kLanes,
                        row.residual == nullptr ? nullptr : row.residual + first + v * kLanes,
                        mask, acc[v]);
    }
}

// Every vector of channels of edge pixel `ow`: four at a time, then two, then one.
NIMBUS_AVX512F void compute_edge_pixel(const SDepthwiseTask& t, const Row& row, std::size_t ow) {
    std::size_t channel = 0;
    for (; channel + 4 * kLanes <= t.channels; channel += 4 * kLanes) {
        compute_pixel<4>(t, row, ow, channel, __mmask16(0xffff));
    }
    if (channel + 2 * kLanes <= t.channels) {
        compute_pixel<2>(t, row, ow, channel, __mmask16(0xffff));
        channel += 2 * kLanes;
    }
    for (; channel < t.channels; channel += kLanes) {
        compute_pixel<1>(t, row, ow, channel, first_lanes(t.channels - channel));
    }
}

// What the next output row of this call touches first: the input rows that the current row
// does not read, and its own output row. At large batch these come from DRAM, in a strided walk
// over channels and rows that the hardware prefetchers do not cover; prefetching them while
// the current row computes made MobileNetV2 layers at batch 8 1.3-2x faster (prefetchw for the
// output, which saves the stall on the read for ownership, gave 10-15% of that).
struct NextRow {
    const char* input;          // column 0 of the first new input row; null when none
    std::size_t input_rows;
    std::size_t input_step;     // bytes from one new input row to the next
    std::size_t input_bytes;    // of one input row
    std::size_t column_bytes;   // input bytes per output column
    char* out;                  // the next output row; null when none
    std::size_t pixel_bytes;
};

NextRow next_row(const SDepthwiseTask& t, std::size_t index, std::size_t row_end) {
    const std::size_t row_bytes = t.width * t.channels * sizeof(float);
    NextRow next{nullptr, 0, t.dilation_h * row_bytes, row_bytes,
                 t.stride_w * t.channels * sizeof(float), nullptr, t.channels * sizeof(float)};
    if (index + 1 >= row_end) {
        return next;
    }
    next.out = reinterpret_cast<char*>(t.out + (index + 1) * t.out_w * t.channels);
    const auto top_of = [&](std::size_t row) {
        return static_cast<std::ptrdiff_t>(row % t.out_h * t.stride_h) -
               static_cast<std::ptrdiff_t>(t.pad_top);
    };
    const auto input_row = [&](std::ptrdiff_t top, std::size_t ky) {
        return top + static_cast<std::ptrdiff_t>(ky * t.dilation_h);
    };
    const std::size_t image = (index + 1) / t.out_h;
    const std::ptrdiff_t top = top_of(index + 1);
    const TapRange taps = taps_inside(top, t.kernel_h, t.dilation_h, t.height);
    std::size_t ky = taps.begin;
    if (image == index / t.out_h) {
        // Rows up to the current window's last one are in cache already.
        const std::ptrdiff_t last = input_row(top_of(index), t.kernel_h - 1);
        while (ky < taps.end && input_row(top, ky) <= last) {
            ++ky;
        }
    }
    if (ky < taps.end) {
        next.input = reinterpret_cast<const char*>(t.x + image * t.height * t.width * t.channels) +
                     static_cast<std::size_t>(input_row(top, ky)) * row_bytes;
        next.input_rows = taps.end - ky;
    }
    return next;
}

// Prefetches part `part` of `parts` of what the next row reads and writes under output columns
// [ow, ow + pixels). One part per vector of channels spreads the prefetches between the loads:
// issued in one burst per strip they stalled on the misses in flight and gained nothing.
inline void prefetch_columns(const NextRow& next, std::size_t ow, std::size_t pixels,
                             std::size_t part, std::size_t parts) {
    const auto prefetch = [&](const char* row, std::size_t column_bytes, std::size_t row_bytes,
                              auto instruction) {
        const std::size_t size = pixels * column_bytes;
        const std::size_t begin = ow * column_bytes + size * part / parts;
        const std::size_t end = std::min(ow * column_bytes + size * (part + 1) / parts, row_bytes);
        for (std::size_t offset = begin; offset < end; offset += kCacheLine) {
            instruction(row + offset);
        }
    };
    for (std::size_t r = 0; r < next.input_rows; ++r) {
        prefetch(next.input + r * next.input_step, next.column_bytes, next.input_bytes,
                 prefetch_read);
    }
    if (next.out != nullptr) {  // every output column lies inside the row: no bound to clip to
        prefetch(next.out, next.pixel_bytes, SIZE_MAX, prefetch_write);
    }
}

// Interior pixels [ow, ow + Pixels) for every vector of channels.
template <std::size_t Pixels>
NIMBUS_AVX512F void compute_strips(const SDepthwiseTask& t, const Row& row, std::size_t ow,
                                   const NextRow& next) {
    const std::size_t left = ow * t.stride_w - t.pad_left;
    StripWindows s;
    s.input = row.image + (row.top + row.rows.begin * t.dilation_h) * t.width * t.channels +
              left * t.channels;
    s.pixel_step = t.stride_w * t.channels;
    s.row_step = t.dilation_h * t.width * t.channels;
    s.column_step = t.dilation_w * t.channels;
    s.weights = t.weights + row.rows.begin * t.kernel_w * t.padded_channels;
    s.weight_row_step = t.kernel_w * t.padded_channels;
    s.kernel_rows = row.rows.end - row.rows.begin;
    s.out = row.out + ow * t.channels;
    s.residual = row.residual == nullptr ? nullptr : row.residual + ow * t.channels;
    const std::size_t vectors = (t.channels + kLanes - 1) / kLanes;
    std::size_t channel = 0;
    for (; channel + kLanes <= t.channels; channel += kLanes) {
        prefetch_columns(next, ow, Pixels, channel / kLanes, vectors);
        compute_strip<Pixels, false>(t, s, channel, __mmask16(0xffff));
    }
    if (channel < t.channels) {
        const auto mask = static_cast<__mmask16>((1u << (t.channels - channel)) - 1);
        prefetch_columns(next, ow, Pixels, vectors - 1, vectors);
        compute_strip<Pixels, true>(t, s, channel, mask);
    }
}

}  // namespace

void run_sdepthwise_avx512(const SDepthwiseTask& task, std::size_t row_begin,
                           std::size_t row_end) {
    const std::size_t channels = task.channels;
    // Output columns [first_inside, end_inside) have every kernel column inside the image.
    const std::size_t span = (task.kernel_w - 1) * task.dilation_w + 1;
    const std::size_t first_inside = (task.pad_left + task.stride_w - 1) / task.stride_w;
    std::size_t end_inside = 0;
    if (task.width + task.pad_left >= span) {
        end_inside = std::min(task.out_w, (task.width + task.pad_left - span) / task.stride_w + 1);
    }
    const bool in_registers = clamps_in_registers(task.activation);
    for (std::size_t index = row_begin; index < row_end; ++index) {
        const std::size_t image = index / task.out_h;
        const std::size_t oh = index % task.out_h;
        const auto top = static_cast<std::ptrdiff_t>(oh * task.stride_h) -
                         static_cast<std::ptrdiff_t>(task.pad_top);
        Row row;
        row.image = task.x + image * task.height * task.width * channels;
        row.top = static_cast<std::size_t>(top);
        row.rows = taps_inside(top, task.kernel_h, task.dilation_h, task.height);
        row.out = task.out + index * task.out_w * channels;
        row.residual =
            task.residual == nullptr ? nullptr : task.residual + index * task.out_w * channels;
        const NextRow next = next_row(task, index, row_end);
        // Pixels outer, channels inner: each pixel's channels are adjacent in memory.
        std::size_t ow = 0;
        for (; ow < task.out_w && ow < first_inside; ++ow) {
            prefetch_columns(next, ow, 1, 0, 1);
            compute_edge_pixel(task, row, ow);
        }
        for (; ow + kStrip <= end_inside; ow += kStrip) {
            compute_strips<kStrip>(task, row, ow, next);
        }
        // The interior pixels that no full strip covers, in strips of 4, 2 and 1.
        if (ow + 4 <= end_inside) {
            compute_strips<4>(task, row, ow, next);
            ow += 4;
        }
        if (ow + 2 <= end_inside) {
            compute_strips<2>(task, row, ow, next);
            ow += 2;
        }
        if (ow < end_inside) {
            compute_strips<1>(task, row, ow, next);
            ow += 1;
        }
        for (; ow < task.out_w; ++ow) {
            prefetch_columns(next, ow, 1, 0, 1);
            compute_edge_pixel(task, row, ow);
        }
        if (!in_registers) {
            activate_avx512(row.out, task.out_w * channels, task.activation);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
