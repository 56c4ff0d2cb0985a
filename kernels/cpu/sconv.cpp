// The float32 convolution driver: packs OIHW weights for the GEMM, depthwise or direct path,
// hands the GEMM the windows of output pixels block by block (implicit im2col) and splits the
// output rows of the direct kernels over threads.
#include "sconv.h"

#include <algorithm>

#include "cache_line.h"
#include "copy_runs.h"
#include "sconv_direct.h"
#include "sconv_winograd.h"
#include "sgemm_paths.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

inline void zero_floats(float* target, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
        target[i] = 0.0f;
    }
}

bool is_pointwise(const ConvGeometry& g, const PackedSconvWeights& w) {
    return w.kernel_h == 1 && w.kernel_w == 1 && w.groups == 1 && g.stride_h == 1 &&
           g.stride_w == 1 && g.pad_top == 0 && g.pad_left == 0 && g.pad_bottom == 0 &&
           g.pad_right == 0;
}

// Output pixels [oh_begin, oh_end) x [ow_begin, ow_end) of every image.
struct PixelRect {
    std::size_t oh_begin;
    std::size_t oh_end;
    std::size_t ow_begin;
    std::size_t ow_end;

    std::size_t width() const { return ow_end - ow_begin; }
    std::size_t pixels() const { return (oh_end - oh_begin) * width(); }
};

PixelRect whole_image(const ConvGeometry& g) { return {0, g.out_h, 0, g.out_w}; }

// The A rows of one group's GEMM: row m is the window of the m-th output pixel of `rect`
// (image by image, row-major inside it), depth (ky, kx, c).
class WindowRows final : public SgemmRows {
public:
    WindowRows(const float* x, const ConvGeometry& g, const PackedSconvWeights& w,
               std::size_t group, const PixelRect& rect)
        : x_(x), g_(g), w_(w), group_(group), rect_(rect) {}

    const float* block(std::size_t row, std::size_t count, std::size_t k0, std::size_t kc,
                       float* scratch, std::size_t& stride) const override {
        // Rows 16 floats longer than the block keep rows 4 KiB apart out of one L1 set.
        stride = kc + 16;
        // The position of each row follows from the previous one's: three divisions per row
        // cost as much as gathering a small window (LeNet's 5x5 over 3 channels).
        const std::size_t pixels = rect_.pixels();
        Pixel pixel{row / pixels, rect_.oh_begin + row % pixels / rect_.width(),
                    rect_.ow_begin + row % rect_.width()};
        for (std::size_t r = 0; r < count; ++r) {
            gather(pixel, k0, k0 + kc, scratch + r * stride);
            if (++pixel.ow == rect_.ow_end) {
                pixel.ow = rect_.ow_begin;
                if (++pixel.oh == rect_.oh_end) {
                    pixel.oh = rect_.oh_begin;
                    ++pixel.image;
                }
            }
        }
        return scratch;
    }

    bool copies() const override { return true; }

private:
    struct Pixel {
        std::size_t image;
        std::size_t oh;
        std::size_t ow;
    };

    // Writes depths [begin, end) of the window of output pixel `pixel` to `target`, in runs:
    // a whole kernel row at once when it lies inside the image and takes every channel, else
    // one tap's channels at a time.
    void gather(const Pixel& pixel, std::size_t begin, std::size_t end, float* target) const {
        const ConvGeometry& g = g_;
        const std::size_t channels = w_.group_channels;
        const std::size_t row_length = w_.kernel_w * channels;
        const std::size_t image = pixel.image;
        // Unsigned wrap-around makes a position before the image look like one past its end.
        const std::size_t top = pixel.oh * g.stride_h - g.pad_top;
        const std::size_t left = pixel.ow * g.stride_w - g.pad_left;
        const bool row_inside = w_.groups == 1 && g.dilation_w == 1 && left < g.width &&
                                left + w_.kernel_w <= g.width;
        std::size_t ky = begin / row_length;
        std::size_t within = begin % row_length;
        for (std::size_t depth = begin; depth < end;) {
            const std::size_t ih = top + ky * g.dilation_h;
            std::size_t run = std::min(row_length - within, end - depth);
            const float* source = nullptr;
            if (ih < g.height) {
                const float* line =
                    x_ + ((image * g.height + ih) * g.width) * g.channels + group_ * channels;
                if (row_inside) {
                    source = line + left * g.channels + within;
                } else {
                    const std::size_t kx = within / channels;
                    const std::size_t c = within % channels;
                    run = std::min(channels - c, end - depth);
                    const std::size_t iw = left + kx * g.dilation_w;
                    source = iw < g.width ? line + iw * g.channels + c : nullptr;
                }
            }
            if (source != nullptr) {
                copy_run(target, source, run * sizeof(float));
            } else {
                zero_floats(target, run);
            }
            target += run;
            depth += run;
            within += run;
            if (within == row_length) {
                within = 0;
                ++ky;
            }
        }
    }

    const float* x_;
    const ConvGeometry& g_;
    const PackedSconvWeights& w_;
    std::size_t group_;
    PixelRect rect_;
};

// A run [begin, end) of output positions along one axis whose windows have the same taps
// inside the image along it: [tap_begin, tap_end), empty when all read padding.
struct TapBand {
    std::size_t begin;
    std::size_t end;
    std::size_t tap_begin;
    std::size_t tap_end;
};

std::vector<TapBand> tap_bands(std::size_t outputs, std::size_t size, std::size_t kernel,
                               std::size_t stride, std::size_t pad, std::size_t dilation) {
    std::vector<TapBand> bands;
    for (std::size_t position = 0; position < outputs; ++position) {
        // Unsigned wrap-around makes a tap before the image look like one past its end; the
        // taps inside it follow those before it and precede those after it.
        const std::size_t start = position * stride - pad;
        std::size_t first = 0;
        while (first < kernel && start + first * dilation >= size) {
            ++first;
        }
        std::size_t end = first;
        while (end < kernel && start + end * dilation < size) {
            ++end;
        }
        if (first == end) {
            first = end = 0;
        }
        if (!bands.empty() && bands.back().tap_begin == first && bands.back().tap_end == end) {
            bands.back().end = position + 1;
        } else {
            bands.push_back({position, position + 1, first, end});
        }
    }
    return bands;
}

// The share of the window taps of a band set's positions that read the image.
double inside_share(const std::vector<TapBand>& bands, std::size_t kernel) {
    std::size_t inside = 0;
    for (const TapBand& band : bands) {
        inside += (band.end - band.begin) * (band.tap_end - band.tap_begin);
    }
    return static_cast<double>(inside) / static_cast<double>(bands.back().end * kernel);
}

// copy(offset in [N, OH, OW], offset in the rect's rows, pixels) for each row of `rect` in
// each image.
template <typename Copy>
void for_rect_rows(const ConvGeometry& g, const PixelRect& rect, Copy copy) {
    std::size_t row = 0;
    for (std::size_t image = 0; image < g.batch; ++image) {
        for (std::size_t oh = rect.oh_begin; oh < rect.oh_end; ++oh) {
            copy((image * g.out_h + oh) * g.out_w + rect.ow_begin, row, rect.width());
            row += rect.width();
        }
    }
}

// GEMMs over output regions whose windows share their taps inside the image, each summing
// those taps alone, for convolutions whose windows read much padding: DeepLabV3's ASPP, a 3x3
// convolution at dilation 12 over 14x14, reads the image at 18% of its taps. Each region
// runs into a buffer of its own rows (and takes the residual from one), then lands in `out`.
void run_tap_regions(const float* x, const ConvGeometry& g, const PackedSconvWeights& w,
                     const std::vector<TapBand>& rows, const std::vector<TapBand>& columns,
                     const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    const std::size_t outputs = w.out_channels;
    const std::size_t group_outputs = outputs / w.groups;
    const std::size_t channels = w.group_channels;
    for (const TapBand& row : rows) {
        for (const TapBand& column : columns) {
            const PixelRect rect{row.begin, row.end, column.begin, column.end};
            const std::size_t m = g.batch * rect.pixels();
            std::vector<DepthRange> depths;
            for (std::size_t ky = row.tap_begin; ky < row.tap_end; ++ky) {
                const std::size_t first = ky * w.kernel_w;
                depths.push_back({(first + column.tap_begin) * channels,
                                  (first + column.tap_end) * channels});
            }
            const CacheLineArray<float> region = cache_line_array<float>(m * outputs);
            CacheLineArray<float> residual;
            if (epilogue.residual != nullptr) {
                residual = cache_line_array<float>(m * outputs);
                for_rect_rows(g, rect, [&](std::size_t pixel, std::size_t at, std::size_t count) {
                    std::copy_n(epilogue.residual + pixel * outputs, count * outputs,
                                residual.get() + at * outputs);
                });
            }
            for (std::size_t group = 0; group < w.groups; ++group) {
                const std::size_t first = group * group_outputs;
                SgemmEpilogue shifted = epilogue;
                shifted.bias = epilogue.bias == nullptr ? nullptr : epilogue.bias + first;
                shifted.residual = residual == nullptr ? nullptr : residual.get() + first;
                shifted.residual_stride = outputs;
                sgemm_rows(WindowRows(x, g, w, group, rect), m, w.group_weights[group], shifted,
                           region.get() + first, outputs, threads, depths);
            }
            for_rect_rows(g, rect, [&](std::size_t pixel, std::size_t at, std::size_t count) {
                std::copy_n(region.get() + at * outputs, count * outputs, out + pixel * outputs);
            });
        }
    }
}

// Convolutions whose windows read the image at no more than this share of their taps run
// run_tap_regions. Two threads, 3x3: 960 -> 256 at dilation 12 over 28x28 (51%) 16.2 -> 9.2 ms,
// 128 -> 128 at dilation 6 over 28x28 (73%) 1.07 -> 0.89 ms; 512 -> 512 with padding 1 over
// 7x7 (82%) on AVX2 1.17 -> 1.31 ms, its regions' GEMMs too short for the work they save.
constexpr double kTapRegionsShare = 0.8;

void run_depthwise(const float* x, const ConvGeometry& g, const PackedSconvWeights& w,
                   const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    std::vector<float> bias(w.padded_channels, 0.0f);
    if (epilogue.bias != nullptr) {
        std::copy(epilogue.bias, epilogue.bias + w.out_channels, bias.begin());
    }
    const SDepthwiseTask task{x,
                              g.batch,
                              g.height,
                              g.width,
                              g.channels,
                              g.out_h,
                              g.out_w,
                              w.kernel_h,
                              w.kernel_w,
                              g.stride_h,
                              g.stride_w,
                              g.pad_top,
                              g.pad_left,
                              g.dilation_h,
                              g.dilation_w,
                              w.depthwise_weights.data(),
                              w.padded_channels,
                              bias.data(),
                              epilogue.residual,
                              epilogue.activation,
                              out};
    auto kernel = run_sdepthwise_portable;
#ifdef NIMBUS_X86_KERNELS
    if (w.isa == Isa::avx512_vnni) {
        kernel = run_sdepthwise_avx512;
    } else if (w.isa == Isa::avx2) {
        kernel = run_sdepthwise_avx2;
    }
#endif
    // The kernels prefetch the next row of their run. MobileNetV2 float at batch 1, two threads:
    // 4-13% faster than at 8 runs per thread while the host's memory was contended, within 2%
    // otherwise.
    parallel_thread_runs(g.batch * g.out_h, threads, [&](std::size_t begin, std::size_t end) {
        kernel(task, begin, end);
    });
}

#ifdef NIMBUS_X86_KERNELS
// Per 16 pixels of a row the direct kernel spends one vector FMA per tap and output channel, at
// least 4 when few channels leave too few accumulators to cover the latency of the FMA; the
// GEMM one per pixel. Rows too narrow to gain from that stay on the GEMM.
bool runs_direct(const ConvGeometry& g, const PackedSconvWeights& w) {
    constexpr std::size_t kFmaLatency = 4;
    const std::size_t chunks = (g.out_w + 15) / 16;
    return !w.direct_weights.empty() && g.stride_w == 1 &&
           chunks * std::max(w.out_channels, kFmaLatency) < g.out_w;
}

bool runs_few_inputs(const ConvGeometry& g, const PackedSconvWeights& w) {
    return !w.few_inputs_weights.empty() && g.dilation_h == 1 && g.dilation_w == 1;
}

using DirectKernel = void (*)(const SconvDirectTask&, std::size_t, std::size_t);

// One of the direct kernels of sconv_direct.h over weights packed for it, in runs of output rows.
void run_direct(DirectKernel kernel, const std::vector<float>& packed, const float* x,
                const ConvGeometry& g, const PackedSconvWeights& w,
                const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    const SconvDirectTask task{x,
                               &g,
                               w.kernel_h,
                               w.kernel_w,
                               w.out_channels,
                               packed.data(),
                               epilogue.bias,
                               epilogue.residual,
                               epilogue.activation,
                               out,
                               w.groups};
    // As run_depthwise (LeNet float at batch 8: 0.059 -> 0.055 ms).
    parallel_thread_runs(g.batch * g.out_h, threads,
                         [&](std::size_t begin, std::size_t end) { kernel(task, begin, end); });
}
#endif

}  // namespace

PackedSconvWeights pack_sconv_weights(const float* w, std::size_t out_channels,
                                      std::size_t group_channels, std::size_t kernel_h,
                                      std::size_t kernel_w, std::size_t groups, Isa isa,
                                      bool unit_stride) {
    PackedSconvWeights packed;
    packed.isa = sgemm_path(isa);
    packed.out_channels = out_channels;
    packed.group_channels = group_channels;
    packed.kernel_h = kernel_h;
    packed.kernel_w = kernel_w;
    packed.groups = groups;
    const std::size_t taps = kernel_h * kernel_w;
    packed.depthwise = group_channels == 1 && groups == out_channels && groups > 1;
    if (packed.depthwise) {
        packed.padded_channels = round_up(out_channels, kSDepthwiseChannelBlock);
        packed.depthwise_weights.assign(taps * packed.padded_channels, 0.0f);
        for (std::size_t c = 0; c < out_channels; ++c) {
            for (std::size_t tap = 0; tap < taps; ++tap) {
                packed.depthwise_weights[tap * packed.padded_channels + c] = w[c * taps + tap];
            }
        }
        return packed;
    }
    // A 1x1 kernel stays on the GEMM: copying its input into planar rows would cost about as
    // much as the GEMM does in all.
    if (packed.isa == Isa::avx512_vnni && groups == 1 && out_channels <= kSconvDirectMaxOutputs &&
        taps > 1) {
        packed.direct_weights.resize(taps * group_channels * out_channels);
        float* target = packed.direct_weights.data();
        for (std::size_t ky = 0; ky < kernel_h; ++ky) {
            for (std::size_t c = 0; c < group_channels; ++c) {
                for (std::size_t kx = 0; kx < kernel_w; ++kx) {
                    for (std::size_t o = 0; o < out_channels; ++o) {
                        *target++ = w[((o * group_channels + c) * kernel_h + ky) * kernel_w + kx];
                    }
                }
            }
        }
    }
    if (packed.isa == Isa::avx512_vnni && groups == 1 &&
        group_channels <= kSconvFewInputsMaxChannels &&
        out_channels >= kSconvFewInputsMinOutputs && out_channels <= kSconvFewInputsMaxOutputs &&
        taps > 1) {
        const std::size_t padded_outputs = round_up(out_channels, kSconvFewInputsVector);
        packed.few_inputs_weights.assign(taps * group_channels * padded_outputs, 0.0f);
        for (std::size_t tap = 0; tap < taps; ++tap) {
            for (std::size_t c = 0; c < group_channels; ++c) {
                float* target =
                    packed.few_inputs_weights.data() + (tap * group_channels + c) * padded_outputs;
                for (std::size_t o = 0; o < out_channels; ++o) {
                    target[o] = w[(o * group_channels + c) * taps + tap];
                }
            }
        }
    }
    const std::size_t group_outputs = out_channels / groups;
    if (packed.isa == Isa::avx512_vnni && groups > 1 && group_outputs >= 2 &&
        kSconvGroupedVector % group_outputs == 0 && group_channels <= group_outputs) {
        const std::size_t blocks = (out_channels + kSconvGroupedVector - 1) / kSconvGroupedVector;
        packed.grouped_weights.assign(blocks * taps * group_channels * kSconvGroupedVector, 0.0f);
        for (std::size_t o = 0; o < out_channels; ++o) {
            float* block = packed.grouped_weights.data() +
                           o / kSconvGroupedVector * taps * group_channels * kSconvGroupedVector +
                           o % kSconvGroupedVector;
            for (std::size_t c = 0; c < group_channels; ++c) {
                for (std::size_t tap = 0; tap < taps; ++tap) {
                    block[(tap * group_channels + c) * kSconvGroupedVector] =
                        w[(o * group_channels + c) * taps + tap];
                }
            }
        }
    }
#ifdef NIMBUS_X86_KERNELS
    if (winograd_packable(out_channels, group_channels, kernel_h, kernel_w, groups,
                          packed.isa)) {
        pack_winograd(w, packed);
        if (unit_stride) {
            packed.unit_stride_only = true;
            return packed;
        }
    }
#endif
    const std::size_t depth = taps * group_channels;
    std::vector<float> matrix(group_outputs * depth);
    for (std::size_t group = 0; group < groups; ++group) {
        for (std::size_t o = 0; o < group_outputs; ++o) {
            const float* filter = w + (group * group_outputs + o) * group_channels * taps;
            for (std::size_t c = 0; c < group_channels; ++c) {
                for (std::size_t tap = 0; tap < taps; ++tap) {
                    matrix[o * depth + tap * group_channels + c] = filter[c * taps + tap];
                }
            }
        }
        packed.group_weights.push_back(
            pack_sgemm_weights(matrix.data(), group_outputs, depth, packed.isa));
    }
    return packed;
}

void sconv2d(const float* x, const ConvGeometry& geometry, const PackedSconvWeights& weights,
             const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    const std::size_t m = geometry.batch * geometry.out_h * geometry.out_w;
    if (m == 0 || weights.out_channels == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    if (weights.depthwise) {
        run_depthwise(x, geometry, weights, epilogue, out, threads);
        return;
    }
#ifdef NIMBUS_X86_KERNELS
    if (runs_direct(geometry, weights)) {
        run_direct(run_sconv_direct_avx512, weights.direct_weights, x, geometry, weights,
                   epilogue, out, threads);
        return;
    }
    if (runs_few_inputs(geometry, weights)) {
        run_direct(run_sconv_few_inputs_avx512, weights.few_inputs_weights, x, geometry,
                   weights, epilogue, out, threads);
        return;
    }
    if (!weights.grouped_weights.empty() && epilogue.residual == nullptr) {
        run_direct(run_sconv_grouped_avx512, weights.grouped_weights, x, geometry, weights,
                   epilogue, out, threads);
        return;
    }
    if (!weights.winograd_weights.empty() && geometry.stride_h == 1 && geometry.stride_w == 1 &&
        geometry.dilation_h == 1 && geometry.dilation_w == 1) {
        sconv2d_winograd(x, geometry, weights, epilogue, out, threads);
        return;
    }
#endif
    if (is_pointwise(geometry, weights)) {
        SgemmEpilogue pointwise = epilogue;
        pointwise.residual_stride = weights.out_channels;
        sgemm(x, m, weights.group_weights[0], pointwise, out, threads);
        return;
    }
    const std::vector<TapBand> rows =
        tap_bands(geometry.out_h, geometry.height, weights.kernel_h, geometry.stride_h,
                  geometry.pad_top, geometry.dilation_h);
    const std::vector<TapBand> columns =
        tap_bands(geometry.out_w, geometry.width, weights.kernel_w, geometry.stride_w,
                  geometry.pad_left, geometry.dilation_w);
    if (inside_share(rows, weights.kernel_h) * inside_share(columns, weights.kernel_w) <=
        kTapRegionsShare) {
        run_tap_regions(x, geometry, weights, rows, columns, epilogue, out, threads);
        return;
    }
    const std::size_t group_outputs = weights.out_channels / weights.groups;
    for (std::size_t group = 0; group < weights.groups; ++group) {
        SgemmEpilogue shifted = epilogue;
        const std::size_t first = group * group_outputs;
        shifted.bias = epilogue.bias == nullptr ? nullptr : epilogue.bias + first;
        shifted.residual = epilogue.residual == nullptr ? nullptr : epilogue.residual + first;
        shifted.residual_stride = weights.out_channels;
        sgemm_rows(WindowRows(x, geometry, weights, group, whole_image(geometry)), m,
                   weights.group_weights[group], shifted, out + first, weights.out_channels,
                   threads);
    }
}

}  // namespace nimbus::kernels
