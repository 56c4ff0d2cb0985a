// The AVX-512 VNNI direct int8 convolution for few output channels (qconv_direct.h), the int8
// counterpart of sconv_direct_avx512.cpp. vpdpbusd sums 4 bytes of each int32 lane, so each
// input row that a window reads is turned once into "dword rows" (DwordRows), int32 x of which
// packs 4 bytes of the zero-padded row at padded position x: a channel's bytes at x, x + d,
// x + 2 d and x + 3 d (d the horizontal dilation) in its tap group row, or the bytes of 4
// channels at x in a channel group row (qconv_direct_layout). Padding reads as the activation
// zero point and s8 activations as u8, shifted by +128 like the GEMM's gathered windows. A
// group of 4 taps for 16 adjacent output pixels is then one unaligned load, which vpdpbusd
// multiplies by the 4 weights of each output channel, broadcast, into one accumulator per
// channel. The rows stay while later output rows read them.
//
// The finished accumulators go through the epilogue of the VNNI GEMM (store_column in
// qgemm_avx512_vnni.cpp) with the same per-channel offset, so the results are bit for bit
// those of the GEMM path; permutes then interleave the channels into NHWC pixels.
//
// Only functions marked NIMBUS_AVX512_VNNI use AVX-512 (see qgemm_avx512_vnni.cpp).
#include "qconv_direct.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593),
// or as uninitialized where no branch precedes the conversion (cvtdq2ps in store_pixels).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "interleave_avx512.h"
#include "sizes.h"
#include "vector_math_avx512.h"

#define NIMBUS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;
constexpr std::size_t kGroup = kQconvDirectGroup;

// The 64-bit mask of bits [begin, end), end <= 64.
inline std::uint64_t bit_range(std::size_t begin, std::size_t end) {
    const std::uint64_t below_end = end >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << end) - 1;
    return begin >= end ? 0 : below_end & ~((std::uint64_t{1} << begin) - 1);
}

// What build_rows reads each block of planar bytes with: one masked load takes the bytes of 16
// pixels of up to kQconvDirectMaxChannels channels.
template <std::size_t Channels>
struct PlanarSource {
    const std::uint8_t* source;  // the NHWC row
    std::ptrdiff_t left;         // padding pixels before it
    std::ptrdiff_t width;        // its pixels
    // Lane i of channel c comes from byte i * Channels + c of a block, in dword vector
    // (i * Channels + c) / 16 of its zero-extended bytes: `high` lanes from vector 2 or 3.
    __m512i index[Channels];
    __mmask16 high[Channels];
    __m512i flip;                // 0x80 in every byte for s8 activations
    __m512i fill;                // the zero point in every int32 lane
};

// The planar bytes of padded positions [16 b, 16 b + 16) of each channel, one per int32 lane,
// padding and positions past the row read as the zero point: from one masked load of the
// pixels' bytes, spread over the channels by permutes.
template <std::size_t Channels>
NIMBUS_AVX512_VNNI inline void planar_block(const PlanarSource<Channels>& p, std::size_t block,
                                            __m512i (&planar)[Channels]) {
    const std::ptrdiff_t first = static_cast<std::ptrdiff_t>(block * kLanes) - p.left;
    const auto lanes = static_cast<std::ptrdiff_t>(kLanes);
    const auto begin = static_cast<std::size_t>(std::clamp<std::ptrdiff_t>(-first, 0, lanes));
    const auto end =
        static_cast<std::size_t>(std::clamp<std::ptrdiff_t>(p.width - first, 0, lanes));
    // Masked-off bytes are not read, so the address may lie outside the row.
    const auto address = reinterpret_cast<const void*>(
        reinterpret_cast<std::uintptr_t>(p.source) +
        static_cast<std::uintptr_t>(first * static_cast<std::ptrdiff_t>(Channels)));
    const __m512i bytes = _mm512_xor_si512(
        _mm512_maskz_loadu_epi8(bit_range(begin * Channels, end * Channels), address), p.flip);
    __m512i dwords[Channels];
    dwords[0] = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(bytes));
    if constexpr (Channels > 1) {
        dwords[1] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 1));
    }
    if constexpr (Channels > 2) {
        dwords[2] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 2));
    }
    if constexpr (Channels > 3) {
        dwords[3] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(bytes, 3));
    }
    const auto inside = static_cast<__mmask16>(bit_range(begin, end));
#pragma GCC unroll 4
    for (std::size_t c = 0; c < Channels; ++c) {
        __m512i value = dwords[0];
        if constexpr (Channels > 1) {
            value = _mm512_permutex2var_epi32(dwords[0], p.index[c], dwords[1]);
        }
        if constexpr (Channels > 2) {
            value = _mm512_mask_mov_epi32(
                value, p.high[c],
                _mm512_permutex2var_epi32(dwords[2], p.index[c], dwords[Channels - 1]));
        }
        planar[c] = _mm512_mask_blend_epi32(inside, p.fill, value);
    }
}

// The dword rows of one input row (`source`, `width` NHWC pixels) with `left` padding pixels,
// built in registers: block b of the tap group row of channel c is planar block b of c
// (planar_block) or'ed with its neighbours 1, 2 and 3 dilations ahead, shifted into bytes 1 to
// 3; block b of the channel group row (Channels <= 4: one) the planar blocks b of the channels,
// shifted into bytes 0 to Channels - 1. `rows` is [Channels + 1][row_length]; either kind may
// be left out.
template <std::size_t Channels>
NIMBUS_AVX512_VNNI void build_rows(const QconvDirectTask& t, const std::uint8_t* source,
                                   std::size_t left, std::size_t width, std::size_t row_length,
                                   std::int32_t* rows) {
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    PlanarSource<Channels> p;
    p.source = source;
    p.left = static_cast<std::ptrdiff_t>(left);
    p.width = static_cast<std::ptrdiff_t>(width);
#pragma GCC unroll 4
    for (std::size_t c = 0; c < Channels; ++c) {
        p.index[c] = _mm512_add_epi32(_mm512_mullo_epi32(iota, _mm512_set1_epi32(Channels)),
                                      _mm512_set1_epi32(static_cast<int>(c)));
        p.high[c] = _mm512_cmpge_epi32_mask(p.index[c], _mm512_set1_epi32(2 * kLanes));
    }
    p.flip = _mm512_set1_epi8(static_cast<char>(t.flip));
    p.fill = _mm512_set1_epi32(t.fill);
    const bool tap_rows = t.layout.tap_groups > 0;
    const bool channel_rows = t.layout.packed_taps > 0;
    // Lane i of tap j: position i + j * dilation, in this block or the next.
    const std::size_t dilation = t.geometry->dilation_w;
    __m512i shift[kGroup];
#pragma GCC unroll 4
    for (std::size_t j = 1; j < kGroup; ++j) {
        shift[j] = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j * dilation)));
    }
    __m512i current[Channels];
    __m512i next[Channels];
    planar_block(p, 0, current);
    for (std::size_t x = 0; x < row_length; x += kLanes) {
        if (channel_rows) {
            __m512i pixels = current[0];
#pragma GCC unroll 3
            for (std::size_t c = 1; c < Channels; ++c) {
                pixels = _mm512_or_si512(pixels,
                                         _mm512_slli_epi32(current[c], static_cast<int>(8 * c)));
            }
            _mm512_storeu_si512(rows + Channels * row_length + x, pixels);
        }
        if (!tap_rows) {
            planar_block(p, x / kLanes + 1, current);
            continue;
        }
        planar_block(p, x / kLanes + 1, next);
#pragma GCC unroll 4
        for (std::size_t c = 0; c < Channels; ++c) {
            __m512i dwords = current[c];
#pragma GCC unroll 3
            for (std::size_t j = 1; j < kGroup; ++j) {
                const __m512i tap = _mm512_permutex2var_epi32(current[c], shift[j], next[c]);
                dwords = _mm512_or_si512(dwords, _mm512_slli_epi32(tap, static_cast<int>(8 * j)));
            }
            _mm512_storeu_si512(rows + c * row_length + x, dwords);
            current[c] = next[c];
        }
    }
}

using RowBuilder = void (*)(const QconvDirectTask&, const std::uint8_t*, std::size_t,
                            std::size_t, std::size_t, std::int32_t*);

// build_rows for 1 to kQconvDirectMaxChannels channels, indexed by channels - 1.
constexpr RowBuilder kRowBuilders[kQconvDirectMaxChannels] = {
    build_rows<1>, build_rows<2>, build_rows<3>, build_rows<4>};

// Dword rows of the input rows that the windows of recent output rows read: per input row
// [C + channel groups][row_length], the tap group row of each channel (qconv_direct.h) and
// then the channel group row, which a layout without packed taps leaves out (and one without
// tap groups the others). Padded input row r (r - pad_top in the image) lives in slot
// r % slots, as in sconv_direct_avx512.cpp's PlanarRows: the KH rows of one window never share
// a slot, and the next output rows find the rows they share with this one still there.
class DwordRows {
public:
    // The rows live in per-thread buffers kept between calls: a call may be a few output rows.
    explicit DwordRows(const QconvDirectTask& t)
        : t_(t),
          g_(*t.geometry),
          // Chunks of 16 output pixels read up to the last one's last tap, and the last group of
          // taps starts at most that far.
          row_length_(round_up(round_up(g_.out_w, kLanes) + (t.kernel_w - 1) * g_.dilation_w,
                               kLanes)),
          rows_per_input_(g_.channels + t.layout.channel_groups),
          slots_((t.kernel_h - 1) * g_.dilation_h + 1) {
        thread_local std::vector<std::int32_t> storage;
        thread_local std::vector<std::size_t> tags;
        thread_local std::vector<const std::int32_t*> window;
        storage.resize(slots_ * rows_per_input_ * row_length_);
        tags.assign(slots_, kEmpty);
        window.resize(t.kernel_h);
        data_ = storage.data();
        tags_ = tags.data();
        window_ = window.data();
    }

    std::size_t row_length() const { return row_length_; }

    // The dword rows that output row `index` of N * OH reads, one per kernel row.
    const std::int32_t* const* window(std::size_t index) {
        const std::size_t image = index / g_.out_h;
        const std::size_t top = index % g_.out_h * g_.stride_h;
        for (std::size_t ky = 0; ky < t_.kernel_h; ++ky) {
            window_[ky] = row(image, top + ky * g_.dilation_h);
        }
        return window_;
    }

private:
    static constexpr std::size_t kEmpty = SIZE_MAX;

    // The dword rows of padded input row r of image `image`, built on first use.
    const std::int32_t* row(std::size_t image, std::size_t r) {
        const std::size_t slot = r % slots_;
        std::int32_t* rows = data_ + slot * rows_per_input_ * row_length_;
        const std::size_t tag = image * (g_.pad_top + g_.height + g_.pad_bottom) + r;
        if (tags_[slot] != tag) {
            tags_[slot] = tag;
            fill(rows, image, r - g_.pad_top);
        }
        return rows;
    }

    // ih may have wrapped below zero: then, like past the image, the row is all padding.
    void fill(std::int32_t* rows, std::size_t image, std::size_t ih) const {
        if (ih >= g_.height) {
            const auto padding = static_cast<std::int32_t>(t_.fill * 0x01010101u);
            std::fill(rows, rows + rows_per_input_ * row_length_, padding);
            return;
        }
        const std::uint8_t* source = t_.x + (image * g_.height + ih) * g_.width * g_.channels;
        kRowBuilders[g_.channels - 1](t_, source, g_.pad_left, g_.width, row_length_, rows);
    }

    const QconvDirectTask& t_;
    const ConvGeometry& g_;
    std::size_t row_length_;
    std::size_t rows_per_input_;
    std::size_t slots_;
    std::int32_t* data_;
    std::size_t* tags_;
    const std::int32_t** window_;
};

// Finishes the first `pixels` pixels of acc (one vector per channel) like the VNNI GEMM's
// store_column: f32(acc + offset) * scale, clamped to [lo - zp, hi - zp] (equal to clamping
// after the rounding: the bounds are integers), rounded half to even, plus zp. Then permutes
// interleave the channels into NHWC pixels, stored as bytes.
template <std::size_t Outputs>
NIMBUS_AVX512_VNNI inline void store_pixels(const QconvDirectTask& t,
                                            const __m512i (&acc)[Outputs], std::size_t pixels,
                                            std::uint8_t* out) {
    const __m512 lo = _mm512_set1_ps(static_cast<float>(t.lo - t.zero_point));
    const __m512 hi = _mm512_set1_ps(static_cast<float>(t.hi - t.zero_point));
    __m512i q[Outputs];
#pragma GCC unroll 8
    for (std::size_t o = 0; o < Outputs; ++o) {
        const __m512i sum = _mm512_add_epi32(acc[o], _mm512_set1_epi32(t.offset[o]));
        const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(t.scale[o]));
        q[o] = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(scaled, lo), hi));
    }
    const __m512i zero_point = _mm512_set1_epi32(t.zero_point);
    __m512 bits[Outputs];
#pragma GCC unroll 8
    for (std::size_t o = 0; o < Outputs; ++o) {
        bits[o] = _mm512_castsi512_ps(q[o]);
    }
    const std::size_t count = pixels * Outputs;
#pragma GCC unroll 8
    for (std::size_t j = 0; j < Outputs; ++j) {
        if (j * kLanes >= count) {
            break;
        }
        const __m512i value = _mm512_castps_si512(interleaved_ps(bits, j));
        // The values lie in [lo, hi], inside the output type: truncating to bytes is exact.
        _mm512_mask_cvtepi32_storeu_epi8(out + j * kLanes, first_lanes(count - j * kLanes),
                                         _mm512_add_epi32(value, zero_point));
    }
}

// Adds the products of one group of 4 taps for 16 * Chunks pixels (from `x`) with the 4
// weights of each output channel (w[o]) to the accumulators.
template <std::size_t Outputs, std::size_t Chunks>
NIMBUS_AVX512_VNNI inline void accumulate(__m512i (&acc)[Chunks][Outputs], const std::int32_t* x,
                                          const std::int32_t* w) {
    __m512i value[Chunks];
#pragma GCC unroll 2
    for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
        value[chunk] = _mm512_loadu_si512(x + chunk * kLanes);
    }
#pragma GCC unroll 8
    for (std::size_t o = 0; o < Outputs; ++o) {
        const __m512i weight = _mm512_set1_epi32(w[o]);
#pragma GCC unroll 2
        for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
            acc[chunk][o] = _mm512_dpbusd_epi32(acc[chunk][o], value[chunk], weight);
        }
    }
}

// Output pixels [ow, ow + pixels) of one row, pixels <= 16 * Chunks, from the dword rows of its
// window (rows[ky], DwordRows). Two chunks share each broadcast weight and give few output
// channels enough independent accumulators to hide the latency of vpdpbusd.
template <std::size_t Outputs, std::size_t Chunks>
NIMBUS_AVX512_VNNI void compute_pixels(const QconvDirectTask& t, const std::int32_t* const* rows,
                                       std::size_t row_length, std::size_t ow,
                                       std::size_t pixels, std::uint8_t* out) {
    const ConvGeometry& g = *t.geometry;
    const QconvDirectLayout& layout = t.layout;
    const std::size_t group_step = kGroup * g.dilation_w;
    // The packed taps of a kernel row start at this offset, in their channel group rows.
    const std::size_t first_packed = (t.kernel_w - layout.packed_taps) * g.dilation_w;
    __m512i acc[Chunks][Outputs];
#pragma GCC unroll 2
    for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
#pragma GCC unroll 8
        for (std::size_t o = 0; o < Outputs; ++o) {
            acc[chunk][o] = _mm512_setzero_si512();
        }
    }
    const std::int32_t* w = t.weights;
    for (std::size_t ky = 0; ky < t.kernel_h; ++ky) {
        const std::int32_t* line = rows[ky] + ow;
        for (std::size_t c = 0; c < g.channels; ++c, line += row_length) {
            for (std::size_t group = 0; group < layout.tap_groups; ++group, w += Outputs) {
                accumulate<Outputs, Chunks>(acc, line + group * group_step, w);
            }
        }
        // `line` has passed the tap group rows and points into the channel group rows.
        for (std::size_t tap = 0; tap < layout.packed_taps; ++tap) {
            const std::int32_t* packed = line + first_packed + tap * g.dilation_w;
            for (std::size_t group = 0; group < layout.channel_groups; ++group, w += Outputs) {
                accumulate<Outputs, Chunks>(acc, packed + group * row_length, w);
            }
        }
    }
#pragma GCC unroll 2
    for (std::size_t chunk = 0; chunk < Chunks; ++chunk) {
        const std::size_t first = chunk * kLanes;
        store_pixels<Outputs>(t, acc[chunk], std::min(kLanes, pixels - first),
                              out + (ow + first) * Outputs);
    }
}

using PixelKernel = void (*)(const QconvDirectTask&, const std::int32_t* const*, std::size_t,
                             std::size_t, std::size_t, std::uint8_t*);

template <std::size_t Chunks, std::size_t... Outputs>
constexpr std::array<PixelKernel, sizeof...(Outputs)> pixel_kernels(
    std::index_sequence<Outputs...>) {
    return {compute_pixels<Outputs + 1, Chunks>...};
}

// compute_pixels for 1 to kQconvDirectMaxOutputs channels (indexed by channels - 1), one chunk
// or two (indexed by chunks - 1).
constexpr std::array<PixelKernel, kQconvDirectMaxOutputs> kPixelKernels[2] = {
    pixel_kernels<1>(std::make_index_sequence<kQconvDirectMaxOutputs>()),
    pixel_kernels<2>(std::make_index_sequence<kQconvDirectMaxOutputs>())};

}  // namespace

void run_qconv_direct_avx512(const QconvDirectTask& task, std::size_t row_begin,
                             std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const std::size_t outputs = task.out_channels;
    const std::size_t row_bytes = g.out_w * outputs;
    DwordRows dwords(task);
    for (std::size_t index = row_begin; index < row_end; ++index) {
        const std::int32_t* const* rows = dwords.window(index);
        std::uint8_t* out = task.out + index * row_bytes;
        std::size_t ow = 0;
        for (; ow + kLanes < g.out_w; ow += 2 * kLanes) {
            kPixelKernels[1][outputs - 1](task, rows, dwords.row_length(), ow,
                                          std::min(2 * kLanes, g.out_w - ow), out);
        }
        if (ow < g.out_w) {
            kPixelKernels[0][outputs - 1](task, rows, dwords.row_length(), ow, g.out_w - ow,
                                          out);
        }
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
