// A convolution whose result only a max pooling reads, as ResNet's stem: the convolution runs
// band by band of the rows that a band of pooled rows needs, into scratch that stays in cache,
// and the pooling reads it there. Unfused, at batch 8 the int8 stem wrote 6.4 MB that the
// pooling read back from memory: the pooling alone took 0.4-0.5 ms on two threads, against
// 0.16 ms on data in cache. Each band runs the same kernels on a band of the geometry, so the
// int8 result is the unfused one, bit for bit; the float one within float rounding, since the
// float GEMM rounds a pixel by the rows it shares a register block with, which a band changes
// as another batch size does. The float form refuses Winograd weights, whose tiles would start
// on other rows and round further apart.
#include <algorithm>
#include <cstdint>

#include "cache_line.h"
#include "qconv.h"
#include "sconv.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// Scratch of one band: the convolution rows that its pooled rows read, kept within the share
// of a core's L2 cache that leaves room for the input rows and the packed weights.
constexpr std::size_t kBandBytes = 256 * 1024;
// Bands per thread, for the dynamic balance between threads.
constexpr std::size_t kBandsPerThread = 4;
// The least scratch of a band where the image has more: a band's calls cost a few
// microseconds to set up, as much as a small layer's band computes (LeNet's first convolution
// at batch 1 was 5% slower in bands of one pooled row).
constexpr std::size_t kMinBandBytes = 64 * 1024;

// Rows [begin, end) of a dimension of `size`, as signed positions that may lie in padding.
struct Span {
    std::ptrdiff_t begin;
    std::ptrdiff_t end;
};

// The rows of a convolution input (or output) that output rows [first, last) read: window
// starts at row * stride - pad, `extent` rows each.
Span rows_read(std::size_t first, std::size_t last, std::size_t stride, std::size_t pad,
               std::size_t extent) {
    return {static_cast<std::ptrdiff_t>(first * stride) - static_cast<std::ptrdiff_t>(pad),
            static_cast<std::ptrdiff_t>((last - 1) * stride + extent) -
                static_cast<std::ptrdiff_t>(pad)};
}

std::size_t clamp_row(std::ptrdiff_t row, std::size_t size) {
    return static_cast<std::size_t>(
        std::clamp<std::ptrdiff_t>(row, 0, static_cast<std::ptrdiff_t>(size)));
}

// Runs conv_band(x rows, band geometry, scratch) for each band of the convolution's result
// rows, then the pooling of the band's rows from the scratch; `element` and `element_bytes`
// are the result's, `x_element_bytes` the input's.
template <typename ConvBand>
void run_conv_pool_bands(const void* x, std::size_t x_element_bytes, const ConvGeometry& conv,
                         std::size_t kernel_h, std::size_t channels, PoolElement element,
                         std::size_t element_bytes, const PoolGeometry& pool, void* out,
                         std::size_t threads, ConvBand conv_band) {
    const std::size_t conv_row_bytes = conv.out_w * channels * element_bytes;
    const std::size_t pool_row_bytes = pool.out_w * channels * element_bytes;
    if (conv.batch * pool.out_h * pool_row_bytes == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    // Pooled rows per band: as many as the scratch holds, while every thread gets a few bands
    // of at least kMinBandBytes.
    const std::size_t pooled_row_bytes = pool.stride_h * conv_row_bytes;  // of scratch, about
    const std::size_t fit = std::max<std::size_t>(1, kBandBytes / pooled_row_bytes);
    const std::size_t least = (kMinBandBytes + pooled_row_bytes - 1) / pooled_row_bytes;
    const std::size_t balanced = conv.batch * pool.out_h / (threads * kBandsPerThread);
    const std::size_t rows = std::min(fit, std::max(least, balanced));
    // Every thread gets a band, though: one parallel region costs less than the convolution's
    // and the pooling's in turn, even where bands overlap by a row.
    const std::size_t bands_per_image =
        std::min(pool.out_h, std::max((pool.out_h + rows - 1) / rows,
                                      (threads + conv.batch - 1) / conv.batch));
    const std::size_t band_rows = (pool.out_h + bands_per_image - 1) / bands_per_image;
    const std::size_t conv_span = (kernel_h - 1) * conv.dilation_h + 1;
    const std::size_t pool_span = (pool.kernel_h - 1) * pool.dilation_h + 1;
    const auto* images = static_cast<const std::uint8_t*>(x);
    const std::size_t x_row_bytes = conv.width * conv.channels * x_element_bytes;
    parallel_for(conv.batch * bands_per_image, threads, [&](std::size_t item) {
        const std::size_t image = item / bands_per_image;
        const std::size_t first = item % bands_per_image * band_rows;
        const std::size_t last = std::min(pool.out_h, first + band_rows);
        if (first >= last) {
            return;
        }
        // The convolution rows that the band's windows read, inside the convolution's result.
        const Span wanted = rows_read(first, last, pool.stride_h, pool.pad_top, pool_span);
        const std::size_t conv_first = clamp_row(wanted.begin, conv.out_h);
        const std::size_t conv_last = std::max(conv_first, clamp_row(wanted.end, conv.out_h));
        // Those rows as a convolution of their own: the input rows they read, with the padding
        // that lies above and below the image.
        ConvGeometry band = conv;
        band.batch = 1;
        band.out_h = conv_last - conv_first;
        const CacheLineArray<std::uint8_t> scratch =
            cache_line_array<std::uint8_t>(band.out_h * conv_row_bytes);
        if (band.out_h > 0) {
            const Span input =
                rows_read(conv_first, conv_last, conv.stride_h, conv.pad_top, conv_span);
            const std::size_t input_first = clamp_row(input.begin, conv.height);
            const std::size_t input_last = clamp_row(input.end, conv.height);
            band.height = input_last - input_first;
            band.pad_top = static_cast<std::size_t>(
                static_cast<std::ptrdiff_t>(input_first) - input.begin);
            band.pad_bottom = static_cast<std::size_t>(
                input.end - static_cast<std::ptrdiff_t>(input_last));
            conv_band(images + (image * conv.height + input_first) * x_row_bytes, band,
                      scratch.get());
        }
        PoolGeometry pooled = pool;
        pooled.batch = 1;
        pooled.height = band.out_h;
        pooled.width = conv.out_w;
        pooled.channels = channels;
        pooled.pad_top =
            static_cast<std::size_t>(static_cast<std::ptrdiff_t>(conv_first) - wanted.begin);
        pooled.out_h = last - first;
        max_pool2d(scratch.get(), element, pooled,
                   static_cast<std::uint8_t*>(out) + (image * pool.out_h + first) * pool_row_bytes,
                   1);
    });
}

}  // namespace

void qconv2d_max_pool2d(const void* x, bool x_signed, std::int32_t x_zero_point,
                        const ConvGeometry& conv, const PackedConvWeights& weights,
                        const Epilogue& epilogue, const PoolGeometry& pool, void* out,
                        std::size_t threads) {
    const PoolElement element =
        epilogue.type == OutputType::s8 ? PoolElement::s8 : PoolElement::u8;
    run_conv_pool_bands(x, 1, conv, weights.kernel_h, weights.out_channels, element, 1, pool, out,
                        threads, [&](const void* rows, const ConvGeometry& band, void* scratch) {
                            qconv2d(rows, x_signed, x_zero_point, band, weights, epilogue,
                                    scratch, 1);
                        });
}

void sconv2d_max_pool2d(const float* x, const ConvGeometry& conv,
                        const PackedSconvWeights& weights, const SgemmEpilogue& epilogue,
                        const PoolGeometry& pool, float* out, std::size_t threads) {
    run_conv_pool_bands(x, sizeof(float), conv, weights.kernel_h, weights.out_channels,
                        PoolElement::f32, sizeof(float), pool, out, threads,
                        [&](const void* rows, const ConvGeometry& band, void* scratch) {
                            sconv2d(static_cast<const float*>(rows), band, weights, epilogue,
                                    static_cast<float*>(scratch), 1);
                        });
}

}  // namespace nimbus::kernels
