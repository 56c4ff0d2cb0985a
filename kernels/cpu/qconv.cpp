// The int8 convolution driver: packs OIHW weights for the GEMM, depthwise or direct path,
// points the GEMM at windows of NHWC activations in place (implicit GEMM) or gathers them into
// per-thread scratch rows (im2col), and splits the work over threads.
#include "qconv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "copy_runs.h"
#include "depthwise.h"
#include "qconv_direct.h"
#include "quantize.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// vpdpbusd reads depth in groups of 4 bytes: gathered rows of that length need no repacking.
constexpr std::size_t kDepthGroup = 4;
// Gathered rows per thread at a time: their bytes stay in L2 while every weight panel passes.
constexpr std::size_t kScratchBytes = 256 * 1024;
// The fewest rows of a tile: a multiple of the row blocks of every GEMM path.
constexpr std::size_t kRowQuantum = 48;
// Tiles are whole blocks of this many rows, the VNNI kernel's block over a full panel.
constexpr std::size_t kRowBlock = 6;

std::size_t element_size(OutputType type) {
    return type == OutputType::u8 || type == OutputType::s8 ? 1 : 4;
}

bool is_pointwise(const ConvGeometry& g, const PackedConvWeights& w) {
    return w.kernel_h == 1 && w.kernel_w == 1 && w.groups == 1 && g.stride_h == 1 &&
           g.stride_w == 1 && g.pad_top == 0 && g.pad_left == 0 && g.pad_bottom == 0 &&
           g.pad_right == 0;
}

// Copies `count` activations, shifting s8 values to u8 when `flip` is 0x80.
void copy_activations(std::uint8_t* target, const std::uint8_t* source, std::size_t count,
                      std::uint8_t flip) {
    if (flip == 0) {
        copy_run(target, source, count);
        return;
    }
    for (std::size_t i = 0; i < count; ++i) {
        target[i] = source[i] ^ flip;
    }
}

// The position (image, oh, ow) of output pixel `first` and of those after it. Each follows from
// the previous one's: three divisions per pixel cost as much as gathering a small window.
struct PixelCursor {
    const ConvGeometry& g;
    std::size_t image;
    std::size_t oh;
    std::size_t ow;

    PixelCursor(const ConvGeometry& geometry, std::size_t first)
        : g(geometry),
          image(first / (g.out_h * g.out_w)),
          oh(first % (g.out_h * g.out_w) / g.out_w),
          ow(first % g.out_w) {}

    // Moves to the next pixel; true when it starts a new output row.
    bool next() {
        if (++ow < g.out_w) {
            return false;
        }
        ow = 0;
        if (++oh == g.out_h) {
            oh = 0;
            ++image;
        }
        return true;
    }
};

// Writes the windows of output pixels [first, first + rows), restricted to the channels of
// `group`, as rows of `depth` unsigned bytes (s8 values shifted by +128), kernel row ky at
// ky * w.row_depth. Taps in the padding get the activation zero point `fill`, so they add
// (fill - fill) * w = 0 to the GEMM, whose zero-point correction counts every tap. `lines` is
// the caller's scratch.
void gather_windows(const std::uint8_t* x, bool x_signed, std::uint8_t fill,
                    const ConvGeometry& g, const PackedConvWeights& w, std::size_t group,
                    std::size_t first, std::size_t rows, std::size_t depth,
                    std::uint8_t* scratch, std::vector<const std::uint8_t*>& lines) {
    const std::size_t channels = w.group_channels;
    const std::uint8_t flip = x_signed ? 0x80 : 0x00;
    // A kernel row inside the image is one run of bytes when it takes every channel.
    const bool rows_are_contiguous = w.groups == 1 && g.dilation_w == 1;
    const std::size_t row_bytes = w.kernel_w * channels;
    const std::uint8_t* x_end = x + g.batch * g.height * g.width * g.channels;
    // The input lines of a window's kernel rows change only with the output row.
    PixelCursor pixel(g, first);
    lines.resize(w.kernel_h);  // null: the kernel row is padding
    bool lines_inside = false;  // no kernel row of this output row is padding
    const auto find_lines = [&] {
        lines_inside = true;
        for (std::size_t ky = 0; ky < w.kernel_h; ++ky) {
            // Unsigned wrap-around makes a row before the image look like one past its end.
            const std::size_t ih = pixel.oh * g.stride_h + ky * g.dilation_h - g.pad_top;
            lines[ky] = ih < g.height ? x + (pixel.image * g.height + ih) * g.width * g.channels +
                                            group * channels
                                      : nullptr;
            lines_inside = lines_inside && lines[ky] != nullptr;
        }
    };
    find_lines();
    const std::size_t windows_bytes = w.kernel_h * w.row_depth;
    for (std::size_t r = 0; r < rows; ++r) {
        if (r > 0 && pixel.next()) {
            find_lines();
        }
        const std::size_t left = pixel.ow * g.stride_w - g.pad_left;
        const bool row_inside = left < g.width && left + w.kernel_w <= g.width;
        std::uint8_t* target = scratch + r * depth;
        // A window inside the image: one copy of row_depth bytes per kernel row. The bytes past
        // row_bytes meet zero weights, so they may hold the next pixels' activations, as the
        // implicit GEMM reads them in place. ResNet's stem (3 channels: 7 kernel rows of 21
        // bytes in rows of 24) at batch 8 on AMX: 2.5 -> 2.15 ms, against a fill and a copy
        // per kernel row and the depth's tail zeroed a byte at a time.
        if (rows_are_contiguous && row_inside && lines_inside && flip == 0 &&
            lines[w.kernel_h - 1] + left * g.channels + w.row_depth <= x_end) {
            for (std::size_t ky = 0; ky < w.kernel_h; ++ky) {
                copy_run(target + ky * w.row_depth, lines[ky] + left * g.channels, w.row_depth);
            }
            std::memset(target + windows_bytes, 0, depth - windows_bytes);
            continue;
        }
        for (std::size_t ky = 0; ky < w.kernel_h; ++ky, target += w.row_depth - row_bytes) {
            if (w.row_depth > row_bytes) {
                // The bytes past row_bytes meet zero weights: zeros keep the rows defined.
                std::memset(target + row_bytes, 0, w.row_depth - row_bytes);
            }
            const std::uint8_t* line = lines[ky];
            if (line == nullptr) {
                std::memset(target, fill, row_bytes);
                target += row_bytes;
                continue;
            }
            if (rows_are_contiguous && row_inside) {
                copy_activations(target, line + left * g.channels, row_bytes, flip);
            } else {
                for (std::size_t kx = 0; kx < w.kernel_w; ++kx) {
                    const std::size_t iw = left + kx * g.dilation_w;
                    if (iw >= g.width) {
                        std::memset(target + kx * channels, fill, channels);
                    } else {
                        copy_activations(target + kx * channels, line + iw * g.channels,
                                         channels, flip);
                    }
                }
            }
            target += row_bytes;
        }
        for (std::uint8_t* end = scratch + (r + 1) * depth; target < end; ++target) {
            *target = 0;  // the few bytes that pad the depth to whole groups of 4
        }
    }
}

// The epilogue of the output channels of one group.
// (A residual comes only with one group: see qconv2d.)
Epilogue group_epilogue(const Epilogue& epilogue, std::size_t group, std::size_t group_outputs) {
    Epilogue shifted = epilogue;
    if (shifted.bias) {
        shifted.bias += group * group_outputs;
    }
    if (shifted.scale) {
        shifted.scale += group * group_outputs;
    }
    return shifted;
}

// Output pixels in tiles of whole row blocks of the VNNI kernel, about kScratchBytes of
// gathered windows each, as many as a multiple of the thread count and the same size give or
// take one block, so that the threads finish together: rounding tile sizes up instead left
// ResNet-18's last layers (49 rows at batch 1) a tile of 48 rows and one of 1, and half of the
// threads idle.
struct PixelTiles {
    std::size_t pixels;
    std::size_t blocks;
    std::size_t tiles;
    std::size_t tile_rows;  // the most of any tile

    PixelTiles(std::size_t pixels, std::size_t depth, std::size_t threads)
        : pixels(pixels), blocks((pixels + kRowBlock - 1) / kRowBlock) {
        const std::size_t largest_tile =
            std::max(kRowQuantum, kScratchBytes / std::max<std::size_t>(depth, 1)) / kRowBlock;
        tiles = std::min(blocks, round_up((blocks + largest_tile - 1) / largest_tile, threads));
        tile_rows = (blocks + tiles - 1) / tiles * kRowBlock;
    }

    std::size_t first(std::size_t tile) const {
        return std::min(pixels, tile * blocks / tiles * kRowBlock);
    }

    // The threads that take part: scratch is allocated per slot, one per thread.
    std::size_t slots(std::size_t threads) const { return std::min(threads, tiles); }

    // Calls body(slot, first, rows) for every tile on up to slots(threads) threads, each
    // thread with its own slot in [0, slots) (parallel_items' participant).
    template <typename Body>
    void run(std::size_t threads, const Body& body) const {
        parallel_items(tiles, slots(threads), [&](std::size_t slot, std::size_t tile) {
            body(slot, first(tile), first(tile + 1) - first(tile));
        });
    }
};

// The epilogue of a tile of pixels from `first`, for one group: its residual moves with it.
Epilogue tile_epilogue(const Epilogue& epilogue, std::size_t first, std::size_t outputs) {
    Epilogue tile = epilogue;
    if (tile.residual.data != nullptr) {
        tile.residual.data = static_cast<const std::uint8_t*>(tile.residual.data) + first * outputs;
    }
    return tile;
}

void run_gathered_gemm(const std::uint8_t* x, bool x_signed, std::int32_t x_zero_point,
                       const ConvGeometry& g, const PackedConvWeights& w,
                       const Epilogue& epilogue, std::uint8_t* out, std::size_t threads) {
    const std::size_t depth = w.group_weights[0].k;
    const std::size_t group_outputs = w.out_channels / w.groups;
    const std::size_t out_bytes = element_size(epilogue.type);
    const auto fill = static_cast<std::uint8_t>(x_zero_point + (x_signed ? 128 : 0));
    const PixelTiles tiles(g.batch * g.out_h * g.out_w, depth, threads);
    const std::size_t tile_rows = tiles.tile_rows;
    const std::size_t count = tiles.slots(threads);

    // Allocated here, not on the pool threads, where a failed allocation could not be reported.
    std::vector<std::uint8_t> scratch(count * tile_rows * depth);
    // With groups, one group's results go through here into their columns of the output.
    std::vector<std::uint8_t> group_out(w.groups > 1 ? count * tile_rows * group_outputs * out_bytes
                                                     : 0);
    std::vector<std::vector<const std::uint8_t*>> lines(count);
    tiles.run(threads, [&](std::size_t slot, std::size_t first, std::size_t rows) {
        std::uint8_t* rows_of_windows = scratch.data() + slot * tile_rows * depth;
        std::uint8_t* results = group_out.data() + slot * tile_rows * group_outputs * out_bytes;
        for (std::size_t group = 0; group < w.groups; ++group) {
            gather_windows(x, x_signed, fill, g, w, group, first, rows, depth, rows_of_windows,
                           lines[slot]);
            const Epilogue shifted = group_epilogue(epilogue, group, group_outputs);
            if (w.groups == 1) {
                qgemm(rows_of_windows, false, rows, fill, w.group_weights[0],
                      tile_epilogue(shifted, first, w.out_channels),
                      out + first * w.out_channels * out_bytes, 1);
                continue;
            }
            qgemm(rows_of_windows, false, rows, fill, w.group_weights[group], shifted, results,
                  1);
            const std::size_t row_bytes = group_outputs * out_bytes;
            for (std::size_t r = 0; r < rows; ++r) {
                std::memcpy(
                    out + ((first + r) * w.out_channels + group * group_outputs) * out_bytes,
                    results + r * row_bytes, row_bytes);
            }
        }
    });
}

// Whether the VNNI kernel can read this convolution's windows in place (qgemm_runs): one group,
// u8 activations, kernel rows of whole depth groups, each a run of bytes.
bool runs_implicit(bool x_signed, const ConvGeometry& g, const PackedConvWeights& w) {
    return w.isa == Isa::avx512_vnni && w.groups == 1 && !x_signed && g.dilation_w == 1 &&
           w.row_depth % kDepthGroup == 0;
}

// Packed weights of more bytes than this do not stay in a core's L2 cache.
constexpr std::size_t kSplitPanelBytes = 1 << 20;

// Whether the implicit GEMM runs as one GEMM over every pixel whose threads split the weights'
// panels, rather than in pixel tiles: when there are no more tiles than threads, each thread
// would stream all of the weights for its one tile. ResNet-18's last 3x3 convolutions at batch 1
// (49 pixels, 2.3 MB of weights), two threads: 0.167 -> 0.151 ms each.
bool splits_panels(const ConvGeometry& g, const PackedConvWeights& w, std::size_t threads) {
    const PixelTiles tiles(g.batch * g.out_h * g.out_w, w.group_weights[0].k, threads);
    return threads > 1 && tiles.tiles <= threads &&
           w.group_weights[0].data.size() > kSplitPanelBytes;
}

// The implicit GEMM: each tile's pixels whose windows lie inside the image (and whose last run,
// read to row_depth, inside x) point into x; runs of the others are gathered into scratch rows,
// whose kernel rows are row_depth apart. One tile of every pixel when it splits panels.
void run_implicit_gemm(const std::uint8_t* x, std::int32_t x_zero_point, const ConvGeometry& g,
                       const PackedConvWeights& w, const Epilogue& epilogue, std::uint8_t* out,
                       std::size_t threads) {
    const std::size_t depth = w.group_weights[0].k;
    const std::size_t out_bytes = element_size(epilogue.type);
    const auto fill = static_cast<std::uint8_t>(x_zero_point);
    const std::size_t pixels = g.batch * g.out_h * g.out_w;
    const PixelTiles tiles(pixels, depth, threads);
    const bool whole = splits_panels(g, w, threads);
    const std::size_t tile_rows = whole ? pixels : tiles.tile_rows;
    const std::size_t count = whole ? 1 : tiles.slots(threads);
    const std::size_t line_bytes = g.width * g.channels;
    const std::size_t run_stride = g.dilation_h * line_bytes;
    const std::uint8_t* const x_end = x + g.batch * g.height * line_bytes;
    const std::size_t reach = (w.kernel_h - 1) * run_stride + w.row_depth;

    // Allocated here, not on the pool threads, where a failed allocation could not be reported.
    std::vector<std::uint8_t> scratch(count * tile_rows * depth);
    std::vector<const std::uint8_t*> starts(count * tile_rows);
    std::vector<std::size_t> strides(count * tile_rows);
    std::vector<std::vector<const std::uint8_t*>> lines(count);
    const auto run_tile = [&](std::size_t slot, std::size_t first, std::size_t rows,
                              std::size_t gemm_threads) {
        std::uint8_t* gathered = scratch.data() + slot * tile_rows * depth;
        const std::uint8_t** row_starts = starts.data() + slot * tile_rows;
        std::size_t* row_strides = strides.data() + slot * tile_rows;
        std::size_t used = 0;        // scratch rows
        std::size_t edge_first = 0;  // the pending run of pixels to gather
        std::size_t edge_rows = 0;
        const auto gather_edge = [&] {
            gather_windows(x, false, fill, g, w, 0, first + edge_first, edge_rows, depth,
                           gathered + used * depth, lines[slot]);
            for (std::size_t r = 0; r < edge_rows; ++r) {
                row_starts[edge_first + r] = gathered + (used + r) * depth;
                row_strides[edge_first + r] = w.row_depth;
            }
            used += edge_rows;
            edge_rows = 0;
        };
        // Copies: the stores to row_strides below could alias g's and w's fields, which the
        // compiler would then load again for every pixel.
        const ConvGeometry geometry = g;
        const std::size_t last_row = (w.kernel_h - 1) * g.dilation_h;
        const std::size_t kernel_w = w.kernel_w;
        PixelCursor pixel(geometry, first);
        for (std::size_t r = 0; r < rows; ++r, pixel.next()) {
            // Unsigned wrap-around makes a position before the image look like one past it.
            const std::size_t top = pixel.oh * geometry.stride_h - geometry.pad_top;
            const std::size_t left = pixel.ow * geometry.stride_w - geometry.pad_left;
            const std::uint8_t* start = nullptr;
            if (top < geometry.height && top + last_row < geometry.height &&
                left < geometry.width && left + kernel_w <= geometry.width) {
                start = x + (pixel.image * geometry.height + top) * line_bytes +
                        left * geometry.channels;
                if (reach > static_cast<std::size_t>(x_end - start)) {
                    start = nullptr;
                }
            }
            if (start == nullptr) {
                if (edge_rows++ == 0) {
                    edge_first = r;
                }
                continue;
            }
            if (edge_rows > 0) {
                gather_edge();
            }
            row_starts[r] = start;
            row_strides[r] = run_stride;
        }
        if (edge_rows > 0) {
            gather_edge();
        }
        const ActivationRuns runs{row_starts, row_strides, w.kernel_h, w.row_depth};
        qgemm_runs(runs, rows, fill, w.group_weights[0],
                   tile_epilogue(epilogue, first, w.out_channels),
                   out + first * w.out_channels * out_bytes, gemm_threads);
    };
    if (whole) {
        run_tile(0, 0, pixels, threads);
        return;
    }
    tiles.run(threads, [&](std::size_t slot, std::size_t first, std::size_t rows) {
        run_tile(slot, first, rows, 1);
    });
}

// Window depths up to this gather slower at the image's edge than they multiply: the padded
// input is copied out first, so that every window is read in place. So is that of a GEMM that
// splits panels (splits_panels), whose edge windows one thread would gather alone.
constexpr std::size_t kPaddedCopyDepth = 256;

bool has_padding(const ConvGeometry& g) {
    return g.pad_top + g.pad_left + g.pad_bottom + g.pad_right > 0;
}

// The implicit GEMM over a copy of x with its padding written out as the zero point. ResNet's
// stem (7 kernel rows of 24 bytes) gathered the windows of its edge pixels, 7% of them, at
// about 3 times the cost of the others' products: on AVX512-VNNI, two threads, 1.55 -> 1.45 ms
// at batch 8, 0.197 -> 0.183 ms at batch 1.
void run_implicit_gemm_padded(const std::uint8_t* x, std::int32_t x_zero_point,
                              const ConvGeometry& g, const PackedConvWeights& w,
                              const Epilogue& epilogue, std::uint8_t* out, std::size_t threads) {
    ConvGeometry padded = g;
    padded.height = g.pad_top + g.height + g.pad_bottom;
    padded.width = g.pad_left + g.width + g.pad_right;
    padded.pad_top = padded.pad_left = padded.pad_bottom = padded.pad_right = 0;
    const std::size_t line_bytes = g.width * g.channels;
    const std::size_t padded_line_bytes = padded.width * g.channels;
    const auto fill = static_cast<std::uint8_t>(x_zero_point);
    const std::size_t left_bytes = g.pad_left * g.channels;
    const std::size_t right_bytes = g.pad_right * g.channels;
    std::vector<std::uint8_t> copy(g.batch * padded.height * padded_line_bytes);
    parallel_for(g.batch * padded.height, threads, [&](std::size_t line) {
        std::uint8_t* target = copy.data() + line * padded_line_bytes;
        // Unsigned wrap-around makes a line above the image look like one past its end.
        const std::size_t ih = line % padded.height - g.pad_top;
        if (ih >= g.height) {
            std::memset(target, fill, padded_line_bytes);
            return;
        }
        std::memset(target, fill, left_bytes);
        std::memcpy(target + left_bytes,
                    x + (line / padded.height * g.height + ih) * line_bytes, line_bytes);
        std::memset(target + left_bytes + line_bytes, fill, right_bytes);
    });
    run_implicit_gemm(copy.data(), x_zero_point, padded, w, epilogue, out, threads);
}

void run_depthwise(const void* x, bool x_signed, std::int32_t x_zero_point,
                   const ConvGeometry& g, const PackedConvWeights& w, const Epilogue& epilogue,
                   void* out, std::size_t threads) {
    std::vector<std::int32_t> bias(w.padded_channels, 0);
    std::vector<float> scale(w.padded_channels, 0.0f);
    for (std::size_t c = 0; c < w.out_channels; ++c) {
        bias[c] = epilogue.bias ? epilogue.bias[c] : 0;
        scale[c] = epilogue.scale ? epilogue.scale[c] : 0.0f;
    }
    auto kernel = run_depthwise_portable;
    std::vector<std::uint8_t> padding;
#ifdef NIMBUS_X86_KERNELS
    if (vector_isa(w.isa) == Isa::avx512_vnni) {
        kernel = run_depthwise_avx512;
        // It sums u8 x * w over whole windows, padding read as x_zp (s8 x flipped to x + 128).
        const auto u8_zero_point = static_cast<std::uint32_t>(x_zero_point + (x_signed ? 128 : 0));
        for (std::size_t c = 0; c < w.out_channels; ++c) {
            bias[c] = static_cast<std::int32_t>(
                static_cast<std::uint32_t>(bias[c]) -
                u8_zero_point * static_cast<std::uint32_t>(w.depthwise_weight_sums[c]));
        }
        padding.assign(w.padded_channels, static_cast<std::uint8_t>(x_zero_point));
    } else if (vector_isa(w.isa) == Isa::avx2) {
        kernel = run_depthwise_avx2;
    }
#endif
    const DepthwiseTask task{x, x_signed, x_zero_point, &g, w.kernel_h, w.kernel_w,
                             w.depthwise_weights.data(), w.depthwise_vnni_weights.data(),
                             padding.data(), w.padded_channels, bias.data(), scale.data(),
                             epilogue.type, epilogue.zero_point, epilogue.lo, epilogue.hi, out};
    // Rather than one row per item: MobileNetV2 int8, two threads, batch 8 13.4 -> 11.2 ms while
    // the host's memory was contended, 8.0 -> 7.7 ms otherwise; batch 1 0.85 -> 0.81 ms.
    parallel_thread_runs(g.batch * g.out_h, threads,
                         [&](std::size_t begin, std::size_t end) { kernel(task, begin, end); });
}

// The depthwise kernels' epilogues have no float activation: they write f32 values (into `out`
// for an f32 result, else into scratch), which one pass then activates, chunk by chunk, and for
// a u8/s8 result quantizes while the chunk is in cache, as the GEMM's epilogue quantizes a tile.
void run_depthwise_float_activation(const void* x, bool x_signed, std::int32_t x_zero_point,
                                    const ConvGeometry& g, const PackedConvWeights& w,
                                    const Epilogue& epilogue, void* out, std::size_t threads) {
    const std::size_t count = g.batch * g.out_h * g.out_w * w.out_channels;
    const bool quantized = epilogue.type != OutputType::f32;
    std::vector<float> scratch(quantized ? count : 0);
    float* values = quantized ? scratch.data() : static_cast<float*>(out);
    Epilogue dequantized = epilogue;
    dequantized.type = OutputType::f32;
    dequantized.activation = Activation::none;
    run_depthwise(x, x_signed, x_zero_point, g, w, dequantized, values, threads);
    // Chunks big enough that handing one to a pooled thread costs little beside it.
    constexpr std::size_t kChunk = 16384;
    const Isa isa = selected_isa();
    parallel_for((count + kChunk - 1) / kChunk, threads, [&](std::size_t chunk) {
        const std::size_t begin = chunk * kChunk;
        const std::size_t size = std::min(kChunk, count - begin);
        activate(values + begin, size, epilogue.activation, isa);
        if (quantized) {
            quantize_rows(values + begin, 1, size, size, epilogue.output_scale,
                          epilogue.zero_point, epilogue.type == OutputType::u8,
                          static_cast<std::uint8_t*>(out) + begin, size);
        }
    });
}

#ifdef NIMBUS_X86_KERNELS
// Per 16 pixels of a row and group of 4 taps of a kernel row, the direct kernel spends one
// vpdpbusd per output channel, at least 4 when few channels leave too few accumulators to cover
// its latency; the GEMM one per pixel and group of 4 depths, after gathering the window. Rows
// too narrow to gain from that stay on the GEMM (measured over 1 and 3 channels, 3x3 and 5x5:
// the direct kernel is as fast from about 5 pixels with 4 outputs, 7 with 6, 8 with 8), and so
// do the epilogues the direct kernel does not have (s32 and f32 results, a residual, a float
// activation).
bool runs_direct(const ConvGeometry& g, const PackedConvWeights& w, const Epilogue& epilogue) {
    constexpr std::size_t kDpbusdLatency = 4;
    const std::size_t chunks = (g.out_w + 15) / 16;
    return !w.direct_weights.empty() && g.stride_w == 1 &&
           g.dilation_w <= kQconvDirectMaxDilation &&
           (epilogue.type == OutputType::u8 || epilogue.type == OutputType::s8) &&
           epilogue.residual.data == nullptr && epilogue.activation == Activation::none &&
           chunks * std::max(w.out_channels, kDpbusdLatency) < g.out_w;
}

// Not inlined: inside qconv2d it made the GEMM path 4% slower for convolutions that do not take
// this one ([8, 14, 14, 6] -> 16, 5x5, 1 thread: 23.2 -> 24.2 us).
[[gnu::noinline]] void run_direct(const std::uint8_t* x, bool x_signed,
                                  std::int32_t x_zero_point, const ConvGeometry& g,
                                  const PackedConvWeights& w, const Epilogue& epilogue,
                                  std::uint8_t* out, std::size_t threads) {
    // acc = sum(x' * w) - x_zp' * sum(w) + bias over whole windows, padding read as x_zp'
    // (x' = x + 128 for s8 activations), wrapping like the GEMM's column_offset (qgemm.cpp).
    const auto zero_point = static_cast<std::uint32_t>(x_zero_point + (x_signed ? 128 : 0));
    const std::vector<std::int32_t>& sums = w.group_weights[0].column_sums;
    std::vector<std::int32_t> offset(w.out_channels);
    std::vector<float> scale(w.out_channels);
    for (std::size_t o = 0; o < w.out_channels; ++o) {
        const auto bias = static_cast<std::uint32_t>(epilogue.bias ? epilogue.bias[o] : 0);
        const auto sum = static_cast<std::uint32_t>(sums[o]);
        offset[o] = static_cast<std::int32_t>(bias - zero_point * sum);
        scale[o] = epilogue.scale ? epilogue.scale[o] : 0.0f;
    }
    const QconvDirectTask task{x,
                               static_cast<std::uint8_t>(x_signed ? 0x80 : 0x00),
                               static_cast<std::uint8_t>(zero_point),
                               &g,
                               w.kernel_h,
                               w.kernel_w,
                               w.out_channels,
                               qconv_direct_layout(w.group_channels, w.kernel_w),
                               w.direct_weights.data(),
                               offset.data(),
                               scale.data(),
                               epilogue.zero_point,
                               epilogue.lo,
                               epilogue.hi,
                               out};
    parallel_row_runs(g.batch * g.out_h, threads, w.kernel_h,
                      [&](std::size_t begin, std::size_t end) {
                          run_qconv_direct_avx512(task, begin, end);
                      });
}
#endif

// The direct weights (qconv.h) of w [O, C, KH, KW]: per kernel row, the out_channels dwords
// of each group of 4 weights of qconv_direct_layout, the first in the lowest byte.
void pack_direct(const std::int8_t* w, PackedConvWeights& packed) {
    const std::size_t outputs = packed.out_channels;
    const std::size_t channels = packed.group_channels;
    const std::size_t kernel_h = packed.kernel_h;
    const std::size_t kernel_w = packed.kernel_w;
    const QconvDirectLayout layout = qconv_direct_layout(channels, kernel_w);
    const std::size_t first_packed = kernel_w - layout.packed_taps;
    // The weight of tap (ky, kx) of channel c to output o, zero outside the kernel.
    const auto weight = [&](std::size_t o, std::size_t c, std::size_t ky, std::size_t kx) {
        const std::int8_t value =
            c < channels && kx < kernel_w ? w[((o * channels + c) * kernel_h + ky) * kernel_w + kx]
                                          : 0;
        return static_cast<std::uint8_t>(value);
    };
    packed.direct_weights.clear();
    for (std::size_t ky = 0; ky < kernel_h; ++ky) {
        for (std::size_t c = 0; c < channels; ++c) {
            for (std::size_t group = 0; group < layout.tap_groups; ++group) {
                for (std::size_t o = 0; o < outputs; ++o) {
                    std::uint32_t dword = 0;
                    for (std::size_t j = 0; j < kQconvDirectGroup; ++j) {
                        const std::size_t kx = group * kQconvDirectGroup + j;
                        dword |= static_cast<std::uint32_t>(weight(o, c, ky, kx)) << (8 * j);
                    }
                    packed.direct_weights.push_back(static_cast<std::int32_t>(dword));
                }
            }
        }
        for (std::size_t tap = 0; tap < layout.packed_taps; ++tap) {
            for (std::size_t group = 0; group < layout.channel_groups; ++group) {
                for (std::size_t o = 0; o < outputs; ++o) {
                    std::uint32_t dword = 0;
                    for (std::size_t j = 0; j < kQconvDirectGroup; ++j) {
                        const std::size_t c = group * kQconvDirectGroup + j;
                        dword |= static_cast<std::uint32_t>(weight(o, c, ky, first_packed + tap))
                                 << (8 * j);
                    }
                    packed.direct_weights.push_back(static_cast<std::int32_t>(dword));
                }
            }
        }
    }
}

// The AVX-512 VNNI depthwise weights (qconv.h) of w [C, KH * KW] and their per-channel sums.
void pack_depthwise_vnni(const std::int8_t* w, std::size_t taps, PackedConvWeights& packed) {
    const std::size_t slots = depthwise_tap_slots(packed.kernel_h, packed.kernel_w);
    packed.depthwise_vnni_weights.assign(packed.padded_channels * slots, 0);
    packed.depthwise_weight_sums.assign(packed.padded_channels, 0);
    for (std::size_t c = 0; c < packed.out_channels; ++c) {
        const std::size_t block = c / kDepthwiseChannelBlock;
        const std::size_t lane = c % kDepthwiseChannelBlock / 16;  // 128-bit lane
        const std::size_t vector = c % 16 / 4;
        const std::size_t element = lane * 4 + c % 4;
        for (std::size_t tap = 0; tap < taps; ++tap) {
            const std::size_t group = tap / kDepthwiseTapGroup * kDepthwiseTapGroup;
            const std::size_t index = ((block * slots + group + vector) * 16 + element) *
                                          kDepthwiseTapGroup +
                                      tap % kDepthwiseTapGroup;
            packed.depthwise_vnni_weights[index] = w[c * taps + tap];
            packed.depthwise_weight_sums[c] += w[c * taps + tap];
        }
    }
}

}  // namespace

std::size_t conv_row_depth(std::size_t kernel_h, std::size_t kernel_w, std::size_t group_channels,
                           std::size_t groups, Isa isa) {
    const std::size_t row_bytes = kernel_w * group_channels;
    const std::size_t padded = round_up(row_bytes, kDepthGroup);
    if (isa != Isa::avx512_vnni || groups != 1 || kernel_h * kernel_w == 1) {
        return row_bytes;
    }
    // Up to a quarter more products cost less than gathering the windows (ResNet-18's stem,
    // 7 rows of 21 bytes padded to 24: 1.0 -> 0.78 ms per image on one thread); MobileNetV2's,
    // 3 rows of 9 bytes padded to 12, measured slower so.
    const std::size_t flat = round_up(kernel_h * row_bytes, kDepthGroup);
    return kernel_h * padded * 4 <= flat * 5 ? padded : row_bytes;
}

std::size_t conv_gemm_depth(std::size_t kernel_h, std::size_t kernel_w,
                            std::size_t group_channels, std::size_t groups, Isa isa) {
    const std::size_t depth =
        kernel_h * conv_row_depth(kernel_h, kernel_w, group_channels, groups, isa);
    // A gathered window row is padded to what the GEMM reads in place.
    return kernel_h * kernel_w == 1 ? depth : packed_depth(round_up(depth, kDepthGroup), isa);
}

std::size_t conv_output_size(std::size_t size, std::size_t kernel, std::size_t stride,
                             std::size_t pad_begin, std::size_t pad_end, std::size_t dilation) {
    const std::size_t span = (kernel - 1) * dilation + 1;
    const std::size_t padded = size + pad_begin + pad_end;
    return padded < span ? 0 : (padded - span) / stride + 1;
}

PackedConvWeights pack_conv_weights(const std::int8_t* w, std::size_t out_channels,
                                    std::size_t group_channels, std::size_t kernel_h,
                                    std::size_t kernel_w, std::size_t groups, Isa isa) {
    PackedConvWeights packed;
    packed.isa = isa;
    packed.out_channels = out_channels;
    packed.group_channels = group_channels;
    packed.kernel_h = kernel_h;
    packed.kernel_w = kernel_w;
    packed.groups = groups;
    const std::size_t taps = kernel_h * kernel_w;
    packed.depthwise = group_channels == 1 && groups == out_channels && groups > 1;
    if (packed.depthwise) {
        packed.padded_channels = round_up(out_channels, kDepthwiseChannelBlock);
        if (vector_isa(isa) == Isa::avx512_vnni) {
            pack_depthwise_vnni(w, taps, packed);
            return packed;
        }
        packed.depthwise_weights.assign(taps * packed.padded_channels, 0);
        for (std::size_t c = 0; c < out_channels; ++c) {
            for (std::size_t tap = 0; tap < taps; ++tap) {
                const auto low_half = static_cast<std::uint16_t>(w[c * taps + tap]);
                packed.depthwise_weights[tap * packed.padded_channels + c] = low_half;
            }
        }
        return packed;
    }
    // A 1x1 kernel stays on the GEMM, as in sconv.cpp, which reads an unpadded one's
    // activations in place.
    if (vector_isa(isa) == Isa::avx512_vnni && groups == 1 &&
        out_channels <= kQconvDirectMaxOutputs &&
        group_channels <= kQconvDirectMaxChannels && taps > 1) {
        pack_direct(w, packed);
    }
    const std::size_t group_outputs = out_channels / groups;
    packed.row_depth = conv_row_depth(kernel_h, kernel_w, group_channels, groups, isa);
    const std::size_t depth = conv_gemm_depth(kernel_h, kernel_w, group_channels, groups, isa);
    std::vector<std::int8_t> matrix(group_outputs * depth);
    for (std::size_t group = 0; group < groups; ++group) {
        std::fill(matrix.begin(), matrix.end(), 0);
        // OIHW filters to rows of (ky, kx, c): the writes run along c.
        for (std::size_t o = 0; o < group_outputs; ++o) {
            const std::int8_t* filter = w + (group * group_outputs + o) * group_channels * taps;
            for (std::size_t ky = 0; ky < kernel_h; ++ky) {
                for (std::size_t kx = 0; kx < kernel_w; ++kx) {
                    std::int8_t* target =
                        matrix.data() + o * depth + ky * packed.row_depth + kx * group_channels;
                    const std::int8_t* source = filter + ky * kernel_w + kx;
                    for (std::size_t c = 0; c < group_channels; ++c) {
                        target[c] = source[c * taps];
                    }
                }
            }
        }
        packed.group_weights.push_back(pack_weights(matrix.data(), group_outputs, depth, isa));
    }
    return packed;
}

void qconv2d(const void* x, bool x_signed, std::int32_t x_zero_point,
             const ConvGeometry& geometry, const PackedConvWeights& weights,
             const Epilogue& epilogue, void* out, std::size_t threads) {
    if (geometry.batch * geometry.out_h * geometry.out_w == 0 || weights.out_channels == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    if (weights.depthwise && epilogue.activation != Activation::none) {
        run_depthwise_float_activation(x, x_signed, x_zero_point, geometry, weights, epilogue,
                                       out, threads);
    } else if (weights.depthwise) {
        run_depthwise(x, x_signed, x_zero_point, geometry, weights, epilogue, out, threads);
#ifdef NIMBUS_X86_KERNELS
    } else if (runs_direct(geometry, weights, epilogue)) {
        run_direct(static_cast<const std::uint8_t*>(x), x_signed, x_zero_point, geometry,
                   weights, epilogue, static_cast<std::uint8_t*>(out), threads);
#endif
    } else if (is_pointwise(geometry, weights)) {
        const std::size_t m = geometry.batch * geometry.height * geometry.width;
        qgemm(x, x_signed, m, x_zero_point, weights.group_weights[0], epilogue, out, threads);
    } else if (runs_implicit(x_signed, geometry, weights) && has_padding(geometry) &&
               (weights.group_weights[0].k <= kPaddedCopyDepth ||
                splits_panels(geometry, weights, threads))) {
        run_implicit_gemm_padded(static_cast<const std::uint8_t*>(x), x_zero_point, geometry,
                                 weights, epilogue, static_cast<std::uint8_t*>(out), threads);
    } else if (runs_implicit(x_signed, geometry, weights)) {
        run_implicit_gemm(static_cast<const std::uint8_t*>(x), x_zero_point, geometry, weights,
                          epilogue, static_cast<std::uint8_t*>(out), threads);
    } else {
        run_gathered_gemm(static_cast<const std::uint8_t*>(x), x_signed, x_zero_point, geometry,
                          weights, epilogue, static_cast<std::uint8_t*>(out), threads);
    }
}

}  // namespace nimbus::kernels
