#include "pool.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "isa.h"
#include "worker_pool.h"

#ifdef NIMBUS_X86_KERNELS
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define NIMBUS_AVX512 __attribute__((target("avx512f,avx512bw")))
#endif

namespace nimbus::kernels {
namespace {

// The larger of a and b; NaN if either is NaN, as numpy.maximum and PyTorch's max pooling.
template <typename Element>
Element larger(Element a, Element b) {
    if constexpr (std::is_floating_point_v<Element>) {
        return b != b ? b : std::max(a, b);
    } else {
        return std::max(a, b);
    }
}

// One output row (n, oh): each output pixel starts at the lowest value and takes the running
// maximum of its taps, a loop over contiguous channels that the compiler vectorizes.
template <typename Element>
void pool_row(const Element* x, const PoolGeometry& g, std::size_t row, Element* out) {
    const std::size_t image = row / g.out_h;
    const std::size_t oh = row % g.out_h;
    const std::size_t c = g.channels;
    Element* target = out + row * g.out_w * c;
    std::fill(target, target + g.out_w * c, std::numeric_limits<Element>::has_infinity
                                                ? -std::numeric_limits<Element>::infinity()
                                                : std::numeric_limits<Element>::lowest());
    for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
        // Unsigned wrap-around makes a row above the image look like one past its end.
        const std::size_t ih = oh * g.stride_h + ky * g.dilation_h - g.pad_top;
        if (ih >= g.height) {
            continue;
        }
        const Element* line = x + (image * g.height + ih) * g.width * c;
        for (std::size_t ow = 0; ow < g.out_w; ++ow) {
            Element* pixel = target + ow * c;
            for (std::size_t kx = 0; kx < g.kernel_w; ++kx) {
                const std::size_t iw = ow * g.stride_w + kx * g.dilation_w - g.pad_left;
                if (iw >= g.width) {
                    continue;
                }
                const Element* tap = line + iw * c;
                for (std::size_t channel = 0; channel < c; ++channel) {
                    pixel[channel] = larger(pixel[channel], tap[channel]);
                }
            }
        }
    }
}

#ifdef NIMBUS_X86_KERNELS
// One zmm of each element type: its lowest value, masked load and store, and the larger of two.
template <typename Element>
struct Lanes;

template <>
struct Lanes<std::uint8_t> {
    using Vector = __m512i;
    using Mask = __mmask64;
    static constexpr std::size_t kCount = 64;
    NIMBUS_AVX512 static Vector lowest() { return _mm512_setzero_si512(); }
    NIMBUS_AVX512 static Vector load(Mask m, const std::uint8_t* p) {
        return _mm512_maskz_loadu_epi8(m, p);
    }
    NIMBUS_AVX512 static void store(std::uint8_t* p, Mask m, Vector v) {
        _mm512_mask_storeu_epi8(p, m, v);
    }
    NIMBUS_AVX512 static Vector larger(Vector a, Vector b) { return _mm512_max_epu8(a, b); }
};

template <>
struct Lanes<std::int8_t> {
    using Vector = __m512i;
    using Mask = __mmask64;
    static constexpr std::size_t kCount = 64;
    NIMBUS_AVX512 static Vector lowest() { return _mm512_set1_epi8(-128); }
    NIMBUS_AVX512 static Vector load(Mask m, const std::int8_t* p) {
        return _mm512_maskz_loadu_epi8(m, p);
    }
    NIMBUS_AVX512 static void store(std::int8_t* p, Mask m, Vector v) {
        _mm512_mask_storeu_epi8(p, m, v);
    }
    NIMBUS_AVX512 static Vector larger(Vector a, Vector b) { return _mm512_max_epi8(a, b); }
};

template <>
struct Lanes<float> {
    using Vector = __m512;
    using Mask = __mmask16;
    static constexpr std::size_t kCount = 16;
    NIMBUS_AVX512 static Vector lowest() {
        return _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    }
    NIMBUS_AVX512 static Vector load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
    NIMBUS_AVX512 static void store(float* p, Mask m, Vector v) { _mm512_mask_storeu_ps(p, m, v); }
    // larger() of the portable path: maxps returns its second operand when either is NaN, and
    // a NaN tap replaces the running maximum.
    NIMBUS_AVX512 static Vector larger(Vector a, Vector b) {
        return _mm512_mask_mov_ps(_mm512_max_ps(b, a), _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q), b);
    }
};

// pool_row with the running maximum of each window in a register, 64 bytes or 16 floats of
// channels at a time (the last ones masked): the portable loop stores it after every tap, and
// compiles to 16-byte vectors, or to scalars for LeNet's 6 channels.
template <typename Element>
NIMBUS_AVX512 void pool_row_avx512(const Element* x, const PoolGeometry& g, std::size_t row,
                                   Element* out) {
    using L = Lanes<Element>;
    const std::size_t image = row / g.out_h;
    const std::size_t oh = row % g.out_h;
    const std::size_t c = g.channels;
    const Element* lines[16];  // the window's rows inside the image (kernel_h <= 16 here)
    std::size_t line_count = 0;
    for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
        // Unsigned wrap-around makes a row above the image look like one past its end.
        const std::size_t ih = oh * g.stride_h + ky * g.dilation_h - g.pad_top;
        if (ih < g.height) {
            lines[line_count++] = x + (image * g.height + ih) * g.width * c;
        }
    }
    Element* target = out + row * g.out_w * c;
    for (std::size_t ow = 0; ow < g.out_w; ++ow, target += c) {
        for (std::size_t channel = 0; channel < c; channel += L::kCount) {
            const std::size_t count = std::min(L::kCount, c - channel);
            const auto mask = static_cast<typename L::Mask>(
                count == L::kCount ? ~std::uint64_t{0} : (std::uint64_t{1} << count) - 1);
            typename L::Vector best = L::lowest();
            for (std::size_t i = 0; i < line_count; ++i) {
                for (std::size_t kx = 0; kx < g.kernel_w; ++kx) {
                    const std::size_t iw = ow * g.stride_w + kx * g.dilation_w - g.pad_left;
                    if (iw < g.width) {
                        best = L::larger(best, L::load(mask, lines[i] + iw * c + channel));
                    }
                }
            }
            L::store(target + channel, mask, best);
        }
    }
}
#endif

template <typename Element>
void pool_rows(const void* x, const PoolGeometry& g, void* out, std::size_t threads) {
    auto row_kernel = pool_row<Element>;
#ifdef NIMBUS_X86_KERNELS
    if (vector_isa(selected_isa()) == Isa::avx512_vnni && g.kernel_h <= 16) {
        row_kernel = pool_row_avx512<Element>;
    }
#endif
    parallel_for(g.batch * g.out_h, threads, [&](std::size_t row) {
        row_kernel(static_cast<const Element*>(x), g, row, static_cast<Element*>(out));
    });
}

}  // namespace

void max_pool2d(const void* x, PoolElement type, const PoolGeometry& geometry, void* out,
                std::size_t threads) {
    if (geometry.batch * geometry.out_h * geometry.out_w * geometry.channels == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    switch (type) {
        case PoolElement::u8:
            pool_rows<std::uint8_t>(x, geometry, out, threads);
            break;
        case PoolElement::s8:
            pool_rows<std::int8_t>(x, geometry, out, threads);
            break;
        case PoolElement::f32:
            pool_rows<float>(x, geometry, out, threads);
            break;
    }
}

}  // namespace nimbus::kernels
