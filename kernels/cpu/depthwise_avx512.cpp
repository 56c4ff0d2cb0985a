// The AVX-512 VNNI path of the depthwise convolution. vpdpbusd multiplies u8 activations by s8
// weights and sums 4 products into each int32 lane, so a lane takes one channel over 4 taps:
// the bytes of taps t0..t3 of 64 channels are interleaved into quads by two rounds of unpacks
// inside 128-bit lanes, which leaves the channels of the 4 resulting vectors permuted,
//     vector q, 128-bit lane L, int32 element e  <-  channel 16 * L + 4 * q + e,
// the order of PackedConvWeights::depthwise_vnni_weights. A 4x4 transpose of 128-bit blocks
// restores channel order once per output pixel, before the GEMM epilogue (qgemm.h).
//
// sum (x - x_zp) * w = sum x * w - x_zp * sum w: taps outside the image read a row of x_zp
// bytes (and padding taps of zero weight read it too), so every pixel runs the same code and
// the correction, which the driver folds into the bias, covers whole windows. s8 activations
// become u8 by flipping their sign bit (x + 128, and x_zp + 128 in the correction).
//
// Only functions marked NIMBUS_AVX512 use AVX-512 (see qgemm_avx512_vnni.cpp).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "depthwise.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define NIMBUS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace nimbus::kernels {
namespace {

constexpr std::size_t kLanes = 16;
constexpr std::size_t kBlock = kDepthwiseChannelBlock;
static_assert(kBlock == 4 * kLanes, "a pass fills 4 zmm vectors of int32 lanes");

// Output pixels of a row computed in one pass, which loads the weights of a tap group once for
// all of them; their 4 accumulators each stay in registers (4 pixels rather than 2: 144
// channels 56x56 at batch 8, 1.81 -> 1.15 ms on one thread).
constexpr std::size_t kStripPixels = 4;

// The lanes of vector `block` that hold some of the first `count` channels.
inline std::uint32_t lane_mask(std::size_t count, std::size_t block) {
    const std::size_t first = block * kLanes;
    if (count <= first) {
        return 0;
    }
    return count - first >= kLanes ? 0xffffu : (1u << (count - first)) - 1;
}

// The epilogue's operands, copied out of the task into a local: as far as the compiler knows,
// byte stores of results may change the task, which would reload every field for every vector.
struct Finish {
    const std::int32_t* bias;
    const float* scale;
    OutputType type;
    void* out;
    __m512 lo;
    __m512 hi;
    __m512i zero_point;
};

NIMBUS_AVX512 inline Finish finish_of(const DepthwiseTask& task) {
    return {task.bias,
            task.scale,
            task.type,
            task.out,
            _mm512_set1_ps(static_cast<float>(task.lo - task.zero_point)),
            _mm512_set1_ps(static_cast<float>(task.hi - task.zero_point)),
            _mm512_set1_epi32(task.zero_point)};
}

NIMBUS_AVX512 inline void store_vector(const Finish& finish, std::size_t index,
                                       std::size_t channel, std::uint32_t lanes, __m512i raw) {
    const auto mask = static_cast<__mmask16>(lanes);
    const __m512i acc = _mm512_add_epi32(raw, _mm512_loadu_si512(finish.bias + channel));
    if (finish.type == OutputType::s32) {
        _mm512_mask_storeu_epi32(static_cast<std::int32_t*>(finish.out) + index, mask, acc);
        return;
    }
    // cvtdq2ps and cvtps2dq round half to even under the default MXCSR, like the reference.
    const __m512 scaled =
        _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(finish.scale + channel));
    if (finish.type == OutputType::f32) {
        _mm512_mask_storeu_ps(static_cast<float*>(finish.out) + index, mask, scaled);
        return;
    }
    // Clamping before rounding equals clamping after it and keeps the value inside int32.
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(scaled, finish.lo), finish.hi);
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(clamped), finish.zero_point);
    _mm512_mask_cvtepi32_storeu_epi8(static_cast<std::uint8_t*>(finish.out) + index, mask, q);
}

// The operations of a pass over 64 channels in zmm registers, or over 32 in ymm registers, which
// cost half as much on Zen 4 and serve the last 32 channels or fewer (32 channels 112x112 at
// batch 8: 2.44 -> 1.49 ms on one thread). The ymm pass reads the low halves of the 64-channel
// weight vectors: their first two 128-bit lanes hold channels 0-31 in the same order.
template <std::size_t Channels>
struct Simd;

template <>
struct Simd<64> {
    using Vector = __m512i;
    NIMBUS_AVX512 static __m512i zero() { return _mm512_setzero_si512(); }
    NIMBUS_AVX512 static __m512i load(const void* p) { return _mm512_loadu_si512(p); }
    NIMBUS_AVX512 static __m512i load(const void* p, std::uint64_t mask) {
        return _mm512_maskz_loadu_epi8(mask, p);
    }
    NIMBUS_AVX512 static __m512i flip(__m512i x) {
        return _mm512_xor_si512(x, _mm512_set1_epi8(-128));
    }
    NIMBUS_AVX512 static __m512i unpacklo8(__m512i a, __m512i b) {
        return _mm512_unpacklo_epi8(a, b);
    }
    NIMBUS_AVX512 static __m512i unpackhi8(__m512i a, __m512i b) {
        return _mm512_unpackhi_epi8(a, b);
    }
    NIMBUS_AVX512 static __m512i unpacklo16(__m512i a, __m512i b) {
        return _mm512_unpacklo_epi16(a, b);
    }
    NIMBUS_AVX512 static __m512i unpackhi16(__m512i a, __m512i b) {
        return _mm512_unpackhi_epi16(a, b);
    }
    NIMBUS_AVX512 static __m512i widen(__m512i x) { return x; }
};

template <>
struct Simd<32> {
    using Vector = __m256i;
    NIMBUS_AVX512 static __m256i zero() { return _mm256_setzero_si256(); }
    NIMBUS_AVX512 static __m256i load(const void* p) {
        return _mm256_loadu_si256(static_cast<const __m256i*>(p));
    }
    NIMBUS_AVX512 static __m256i load(const void* p, std::uint64_t mask) {
        return _mm256_maskz_loadu_epi8(static_cast<__mmask32>(mask), p);
    }
    NIMBUS_AVX512 static __m256i flip(__m256i x) {
        return _mm256_xor_si256(x, _mm256_set1_epi8(-128));
    }
    NIMBUS_AVX512 static __m256i unpacklo8(__m256i a, __m256i b) {
        return _mm256_unpacklo_epi8(a, b);
    }
    NIMBUS_AVX512 static __m256i unpackhi8(__m256i a, __m256i b) {
        return _mm256_unpackhi_epi8(a, b);
    }
    NIMBUS_AVX512 static __m256i unpacklo16(__m256i a, __m256i b) {
        return _mm256_unpacklo_epi16(a, b);
    }
    NIMBUS_AVX512 static __m256i unpackhi16(__m256i a, __m256i b) {
        return _mm256_unpackhi_epi16(a, b);
    }
    NIMBUS_AVX512 static __m512i widen(__m256i x) { return _mm512_zextsi256_si512(x); }
};

template <std::size_t Channels>
using VectorOf = typename Simd<Channels>::Vector;

// The activation bytes of a pass as u8. The masked load of a partial pass does not touch the
// bytes of channels past the end; full passes take the plain load, which is faster.
template <std::size_t Channels, bool Signed, bool Partial>
NIMBUS_AVX512 inline VectorOf<Channels> load_tap(const std::uint8_t* pixel, std::uint64_t mask) {
    using V = Simd<Channels>;
    const VectorOf<Channels> bytes = Partial ? V::load(pixel, mask) : V::load(pixel);
    return Signed ? V::flip(bytes) : bytes;
}

// acc += the sums of 4 products of u8 x by s8 w in each int32 lane. GCC 12 moves the
// accumulator to another register and back around each _mm512_dpbusd_epi32.
template <typename Vector>
NIMBUS_AVX512 inline void dpbusd(Vector& acc, Vector x, Vector w) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// Adds x * w over the 4 taps at taps[i] + offset to the permuted accumulators of a pass.
template <std::size_t Channels, bool Signed, bool Partial>
NIMBUS_AVX512 inline void add_tap_group(const std::uint8_t* const* taps, std::size_t offset,
                                        std::uint64_t mask, const VectorOf<Channels>* w,
                                        VectorOf<Channels>* acc) {
    using V = Simd<Channels>;
    using Vector = VectorOf<Channels>;
    const Vector t0 = load_tap<Channels, Signed, Partial>(taps[0] + offset, mask);
    const Vector t1 = load_tap<Channels, Signed, Partial>(taps[1] + offset, mask);
    const Vector t2 = load_tap<Channels, Signed, Partial>(taps[2] + offset, mask);
    const Vector t3 = load_tap<Channels, Signed, Partial>(taps[3] + offset, mask);
    const Vector pairs01_low = V::unpacklo8(t0, t1);
    const Vector pairs01_high = V::unpackhi8(t0, t1);
    const Vector pairs23_low = V::unpacklo8(t2, t3);
    const Vector pairs23_high = V::unpackhi8(t2, t3);
    dpbusd(acc[0], V::unpacklo16(pairs01_low, pairs23_low), w[0]);
    dpbusd(acc[1], V::unpackhi16(pairs01_low, pairs23_low), w[1]);
    dpbusd(acc[2], V::unpacklo16(pairs01_high, pairs23_high), w[2]);
    dpbusd(acc[3], V::unpackhi16(pairs01_high, pairs23_high), w[3]);
}

// _mm512_shuffle_i32x4 in its masked form with every lane set: GCC 12 reports the
// _mm512_undefined_epi32 of the unmasked one as uninitialized (GCC bug 105593).
template <int Blocks>
NIMBUS_AVX512 inline __m512i shuffle_blocks(__m512i a, __m512i b) {
    return _mm512_mask_shuffle_i32x4(a, 0xffff, a, b, Blocks);
}

// Puts the permuted accumulators back in channel order (vector j: lanes j of acc[0..3]) and
// finishes them into the output pixel at `out_index`, `count` channels of which exist.
NIMBUS_AVX512 inline void store_pixel(const Finish& finish, std::size_t out_index,
                                      std::size_t channel, std::size_t count,
                                      const __m512i* acc) {
    const __m512i low01 = shuffle_blocks<0x44>(acc[0], acc[1]);   // 0.L0 0.L1 1.L0 1.L1
    const __m512i high01 = shuffle_blocks<0xee>(acc[0], acc[1]);  // 0.L2 0.L3 1.L2 1.L3
    const __m512i low23 = shuffle_blocks<0x44>(acc[2], acc[3]);
    const __m512i high23 = shuffle_blocks<0xee>(acc[2], acc[3]);
    const __m512i ordered[4] = {
        shuffle_blocks<0x88>(low01, low23),  // 0.L0 1.L0 2.L0 3.L0
        shuffle_blocks<0xdd>(low01, low23),  // 0.L1 1.L1 2.L1 3.L1
        shuffle_blocks<0x88>(high01, high23),
        shuffle_blocks<0xdd>(high01, high23),
    };
#pragma GCC unroll 4
    for (std::size_t j = 0; j < 4; ++j) {
        if (j * kLanes < count) {
            store_vector(finish, out_index + j * kLanes, channel + j * kLanes,
                         lane_mask(count, j), ordered[j]);
        }
    }
}

// Where the output pixels of a strip read their taps: tap t of pixel p at
// taps[p * table_stride + t] + p * pixel_step. Pixels whose windows lie inside the image share
// one table (table_stride 0, pixel_step the distance between their windows); others have their
// own (pixel_step 0), since their padding taps stay at the padding row.
struct Strip {
    const std::uint8_t* const* taps;
    std::size_t table_stride;
    std::size_t pixel_step;
    std::size_t tap_slots;
};

// The `Channels` channels from `channel` (`count` of them exist, fewer only when Partial) of
// `Pixels` output pixels, the first at `out_index`. `channel` is a multiple of 64.
template <std::size_t Channels, bool Signed, std::size_t Pixels, bool Partial>
NIMBUS_AVX512 void compute_block(const DepthwiseTask& task, const Strip& strip,
                                 std::size_t channel, std::size_t count, std::size_t out_index) {
    using V = Simd<Channels>;
    using Vector = VectorOf<Channels>;
    const std::uint64_t mask = Partial ? (std::uint64_t{1} << count) - 1 : ~std::uint64_t{0};
    const std::int8_t* weights = task.vnni_weights + channel * strip.tap_slots;
    Vector acc[Pixels][4];
#pragma GCC unroll 4
    for (std::size_t p = 0; p < Pixels; ++p) {
#pragma GCC unroll 4
        for (std::size_t q = 0; q < 4; ++q) {
            acc[p][q] = V::zero();
        }
    }
    for (std::size_t t = 0; t < strip.tap_slots; t += kDepthwiseTapGroup) {
        Vector w[4];
#pragma GCC unroll 4
        for (std::size_t q = 0; q < 4; ++q) {
            w[q] = V::load(weights + (t + q) * kBlock);
        }
#pragma GCC unroll 4
        for (std::size_t p = 0; p < Pixels; ++p) {
            add_tap_group<Channels, Signed, Partial>(strip.taps + p * strip.table_stride + t,
                                                     channel + p * strip.pixel_step, mask, w,
                                                     acc[p]);
        }
    }
    const std::size_t channels = task.geometry->channels;
    const Finish finish = finish_of(task);
#pragma GCC unroll 4
    for (std::size_t p = 0; p < Pixels; ++p) {
        const __m512i wide[4] = {V::widen(acc[p][0]), V::widen(acc[p][1]), V::widen(acc[p][2]),
                                 V::widen(acc[p][3])};
        store_pixel(finish, out_index + p * channels, channel, count, wide);
    }
}

template <bool Signed, std::size_t Pixels>
NIMBUS_AVX512 void compute_pixels(const DepthwiseTask& task, const Strip& strip,
                                  std::size_t out_index) {
    const std::size_t channels = task.geometry->channels;
    const std::size_t full_channels = channels / kBlock * kBlock;
    for (std::size_t c = 0; c < full_channels; c += kBlock) {
        compute_block<kBlock, Signed, Pixels, false>(task, strip, c, kBlock, out_index + c);
    }
    const std::size_t left = channels - full_channels;
    constexpr std::size_t kHalf = kBlock / 2;
    const auto last = left > kHalf    ? compute_block<kBlock, Signed, Pixels, true>
                      : left == kHalf ? compute_block<kHalf, Signed, Pixels, false>
                                      : compute_block<kHalf, Signed, Pixels, true>;
    if (left) {
        last(task, strip, full_channels, left, out_index + full_channels);
    }
}

using StripKernel = void (*)(const DepthwiseTask&, const Strip&, std::size_t);

// The kernel for a strip of `pixels` (1 to kStripPixels) output pixels.
template <bool Signed>
StripKernel strip_kernel(std::size_t pixels) {
    static_assert(kStripPixels == 4, "kKernels has one entry per strip length");
    constexpr StripKernel kKernels[kStripPixels] = {
        compute_pixels<Signed, 1>, compute_pixels<Signed, 2>, compute_pixels<Signed, 3>,
        compute_pixels<Signed, 4>};
    return kKernels[pixels - 1];
}

// The addresses of the taps of one output pixel, x_zp padding for those outside the image.
// Slots past KH * KW (zero weights) repeat the first, so that they stay inside the image when
// the pixels of a strip share the table.
void locate_taps(const DepthwiseTask& task, const std::uint8_t* image, std::ptrdiff_t top,
                 std::ptrdiff_t left, std::size_t tap_slots, const std::uint8_t** taps) {
    const ConvGeometry& g = *task.geometry;
    for (std::size_t ky = 0; ky < task.kernel_h; ++ky) {
        const std::ptrdiff_t ih = top + static_cast<std::ptrdiff_t>(ky * g.dilation_h);
        const bool row_inside = ih >= 0 && ih < static_cast<std::ptrdiff_t>(g.height);
        for (std::size_t kx = 0; kx < task.kernel_w; ++kx) {
            const std::ptrdiff_t iw = left + static_cast<std::ptrdiff_t>(kx * g.dilation_w);
            const bool inside = row_inside && iw >= 0 && iw < static_cast<std::ptrdiff_t>(g.width);
            taps[ky * task.kernel_w + kx] =
                inside ? image + (static_cast<std::size_t>(ih) * g.width +
                                  static_cast<std::size_t>(iw)) * g.channels
                       : task.padding;
        }
    }
    std::fill(taps + task.kernel_h * task.kernel_w, taps + tap_slots, taps[0]);
}

template <bool Signed>
void run_rows(const DepthwiseTask& task, std::size_t row_begin, std::size_t row_end) {
    const ConvGeometry& g = *task.geometry;
    const auto* x = static_cast<const std::uint8_t*>(task.x);
    Strip strip{nullptr, 0, 0, depthwise_tap_slots(task.kernel_h, task.kernel_w)};
    std::vector<const std::uint8_t*> taps(kStripPixels * strip.tap_slots);
    // The output columns [first_inside, end_inside) whose windows lie inside the image width.
    const std::size_t first_inside = (g.pad_left + g.stride_w - 1) / g.stride_w;
    const std::size_t span = (task.kernel_w - 1) * g.dilation_w + 1;
    const std::size_t end_inside =
        g.width + g.pad_left < span ? 0 : (g.width + g.pad_left - span) / g.stride_w + 1;
    const auto left = [&](std::size_t column) {
        return static_cast<std::ptrdiff_t>(column * g.stride_w) -
               static_cast<std::ptrdiff_t>(g.pad_left);
    };
    for (std::size_t row = row_begin; row < row_end; ++row) {
        const std::size_t image = row / g.out_h;
        const std::size_t oh = row % g.out_h;
        const std::uint8_t* image_x = x + image * g.height * g.width * g.channels;
        const auto top = static_cast<std::ptrdiff_t>(oh * g.stride_h) -
                         static_cast<std::ptrdiff_t>(g.pad_top);
        const TapRange rows = taps_inside(top, task.kernel_h, g.dilation_h, g.height);
        const bool rows_inside = rows.begin == 0 && rows.end == task.kernel_h;
        for (std::size_t ow = 0; ow < g.out_w; ow += kStripPixels) {
            const std::size_t pixels = std::min(kStripPixels, g.out_w - ow);
            strip.taps = taps.data();
            if (rows_inside && ow >= first_inside && ow + pixels <= end_inside) {
                locate_taps(task, image_x, top, left(ow), strip.tap_slots, taps.data());
                strip.table_stride = 0;
                strip.pixel_step = g.stride_w * g.channels;
            } else {
                for (std::size_t p = 0; p < pixels; ++p) {
                    locate_taps(task, image_x, top, left(ow + p), strip.tap_slots,
                                taps.data() + p * strip.tap_slots);
                }
                strip.table_stride = strip.tap_slots;
                strip.pixel_step = 0;
            }
            strip_kernel<Signed>(pixels)(task, strip, (row * g.out_w + ow) * g.channels);
        }
    }
}

}  // namespace

void run_depthwise_avx512(const DepthwiseTask& task, std::size_t row_begin,
                          std::size_t row_end) {
    if (task.x_signed) {
        run_rows<true>(task, row_begin, row_end);
    } else {
        run_rows<false>(task, row_begin, row_end);
    }
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
