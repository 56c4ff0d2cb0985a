#include "sconv_block.h"

#include <algorithm>
#include <cstring>

#include "cache_line.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// The expanded rows of a band: with the depthwise results (a few rows more) they stay in a
// Zen 4 or Ice Lake core's L2 (1 MiB, 1.25 MiB) while the three layers pass over them.
constexpr std::size_t kBandBytes = 384 * 1024;
// Pieces of the output rows of an image handed out per thread when the batch alone gives too
// few: each piece recomputes the expanded rows that its first band shares with the piece above.
constexpr std::size_t kPiecesPerThread = 2;

// Output rows [begin, end) of one image, band after band. The expanded rows that the next band
// still needs move to the top of the buffer instead of being computed again; without expansion
// the depthwise layer reads the band's rows of x in place.
void run_piece(const float* x, const InvertedResidual& block, std::size_t image,
               std::size_t begin, std::size_t end, std::size_t band_rows, float* expanded,
               float* filtered, float* out) {
    const ConvGeometry& g = block.depthwise_geometry;
    const std::size_t expanded_channels = block.depthwise->out_channels;
    const std::size_t outputs = block.project->out_channels;
    const std::size_t row_floats = g.width * expanded_channels;
    const std::size_t span = (block.depthwise->kernel_h - 1) * g.dilation_h + 1;
    const float* const image_rows = x + image * g.height * g.width * g.channels;
    std::size_t held_first = 0;  // image rows [held_first, held_end) are in `expanded`
    std::size_t held_end = 0;
    for (std::size_t oh = begin; oh < end; oh += band_rows) {
        const std::size_t rows = std::min(band_rows, end - oh);
        // Image rows of the band's windows; unsigned wrap-around is avoided by comparing
        // before subtracting the padding.
        const std::size_t top = oh * g.stride_h;
        const std::size_t first = top < g.pad_top ? 0 : top - g.pad_top;
        const std::size_t bottom = (oh + rows - 1) * g.stride_h + span;
        const std::size_t last = std::min(g.height, bottom < g.pad_top ? 0 : bottom - g.pad_top);
        const float* band_input = image_rows + first * row_floats;
        if (block.expand != nullptr) {
            if (first >= held_first && first < held_end) {
                std::memmove(expanded, expanded + (first - held_first) * row_floats,
                             (held_end - first) * row_floats * sizeof(float));
            } else {
                held_end = first;  // nothing held is of use
            }
            held_first = first;
            if (last > held_end) {
                const std::size_t inputs = block.expand->group_channels;
                sgemm(x + (image * g.height + held_end) * g.width * inputs,
                      (last - held_end) * g.width, block.expand->group_weights[0],
                      block.expand_epilogue, expanded + (held_end - held_first) * row_floats, 1);
                held_end = last;
            }
            band_input = expanded;
        }
        // The band as an image of its own: its rows start `first` rows into the image, so the
        // padding above it is what remains of pad_top.
        ConvGeometry band = g;
        band.batch = 1;
        band.height = last - first;
        band.pad_top = first + g.pad_top - top;
        band.out_h = rows;
        sconv2d(band_input, band, *block.depthwise, block.depthwise_epilogue, filtered, 1);
        const std::size_t pixel = (image * g.out_h + oh) * g.out_w;
        SgemmEpilogue project = block.project_epilogue;
        if (project.residual != nullptr) {
            project.residual += pixel * outputs;
            project.residual_stride = outputs;
        }
        sgemm(filtered, rows * g.out_w, block.project->group_weights[0], project,
              out + pixel * outputs, 1);
    }
}

}  // namespace

void inverted_residual(const float* x, const InvertedResidual& block, float* out,
                       std::size_t threads) {
    const ConvGeometry& g = block.depthwise_geometry;
    if (g.batch * g.out_h * g.out_w == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    const std::size_t expanded_channels = block.depthwise->out_channels;
    const std::size_t row_bytes = g.width * expanded_channels * sizeof(float);
    const std::size_t span = (block.depthwise->kernel_h - 1) * g.dilation_h + 1;
    const std::size_t held_rows = std::max(span, kBandBytes / std::max<std::size_t>(row_bytes, 1));
    const std::size_t band_rows = std::min(g.out_h, (held_rows - span) / g.stride_h + 1);
    // Pieces of at least a band each, unless that leaves a thread without one: a small image
    // (MobileNetV2's 14x14 and 7x7 blocks are one band) would otherwise run on one thread.
    const std::size_t bands = ceil_div(g.out_h, band_rows);
    const std::size_t pieces = std::min(
        {g.out_h, ceil_div(kPiecesPerThread * threads, g.batch),
         std::max(bands, ceil_div(threads, g.batch))});
    const std::size_t items = g.batch * pieces;
    const std::size_t buffer_rows = (band_rows - 1) * g.stride_h + span;
    const std::size_t expanded_floats = whole_lines<float>(
        block.expand == nullptr ? 0 : buffer_rows * g.width * expanded_channels);
    const std::size_t filtered_floats = whole_lines<float>(band_rows * g.out_w * expanded_channels);
    // Allocated here, not on the pool threads, where a failed allocation could not be reported.
    const std::size_t count = std::min(threads, items);
    const CacheLineArray<float> buffers =
        cache_line_array<float>(count * (expanded_floats + filtered_floats));
    parallel_items(items, count, [&](std::size_t participant, std::size_t item) {
        float* const expanded = buffers.get() + participant * (expanded_floats + filtered_floats);
        const std::size_t image = item / pieces;
        const std::size_t piece = item % pieces;
        run_piece(x, block, image, piece * g.out_h / pieces, (piece + 1) * g.out_h / pieces,
                  band_rows, expanded, expanded + expanded_floats, out);
    });
}

}  // namespace nimbus::kernels
