#include "pool.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "isa.h"
#include "sgemm.h"
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

// An average pooling: the geometry and how its divisors count.
struct AveragePool {
    PoolGeometry g;
    std::size_t pad_bottom;
    std::size_t pad_right;
    bool count_include_pad;
};

// The taps of window `start` (kernel_size taps from input position `start`, which may lie in the
// padding) that the divisor counts along one axis.
inline std::size_t counted_taps(std::ptrdiff_t start, std::size_t kernel_size, std::size_t size,
                                std::size_t pad_before, std::size_t pad_after,
                                bool count_include_pad) {
    const std::ptrdiff_t low = count_include_pad ? -static_cast<std::ptrdiff_t>(pad_before) : 0;
    const auto high = static_cast<std::ptrdiff_t>(size + (count_include_pad ? pad_after : 0));
    const std::ptrdiff_t first = std::max(start, low);
    const std::ptrdiff_t end = std::min(start + static_cast<std::ptrdiff_t>(kernel_size), high);
    return end > first ? static_cast<std::size_t>(end - first) : 0;
}

// One output row (n, oh) of the average pooling: each pixel takes its first tap, adds the others
// in row-major order (0.0f for those outside the image, so a -0.0 sum becomes +0.0 as in the
// reference's padded sum), then divides by its count; loops over contiguous channels that the
// compiler vectorizes.
__attribute__((always_inline)) inline void average_row(const float* x, const AveragePool& pool,
                                                       std::size_t row, float* out) {
    const PoolGeometry& g = pool.g;
    const std::size_t image = row / g.out_h;
    const std::size_t oh = row % g.out_h;
    const std::size_t c = g.channels;
    const auto top = static_cast<std::ptrdiff_t>(oh * g.stride_h) -
                     static_cast<std::ptrdiff_t>(g.pad_top);
    const std::size_t rows_counted = counted_taps(top, g.kernel_h, g.height, g.pad_top,
                                                  pool.pad_bottom, pool.count_include_pad);
    float* target = out + row * g.out_w * c;
    for (std::size_t ow = 0; ow < g.out_w; ++ow) {
        float* __restrict pixel = target + ow * c;
        const auto left = static_cast<std::ptrdiff_t>(ow * g.stride_w) -
                          static_cast<std::ptrdiff_t>(g.pad_left);
        bool first = true;
        for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
            const std::ptrdiff_t ih = top + static_cast<std::ptrdiff_t>(ky);
            const bool row_inside = ih >= 0 && ih < static_cast<std::ptrdiff_t>(g.height);
            for (std::size_t kx = 0; kx < g.kernel_w; ++kx, first = false) {
                const std::ptrdiff_t iw = left + static_cast<std::ptrdiff_t>(kx);
                if (!row_inside || iw < 0 || iw >= static_cast<std::ptrdiff_t>(g.width)) {
                    for (std::size_t channel = 0; channel < c; ++channel) {
                        pixel[channel] = first ? 0.0f : pixel[channel] + 0.0f;
                    }
                    continue;
                }
                const float* __restrict tap =
                    x + ((image * g.height + static_cast<std::size_t>(ih)) * g.width +
                         static_cast<std::size_t>(iw)) * c;
                if (first) {
                    std::copy(tap, tap + c, pixel);
                } else {
                    for (std::size_t channel = 0; channel < c; ++channel) {
                        pixel[channel] += tap[channel];
                    }
                }
            }
        }
        const auto divisor = static_cast<float>(
            rows_counted * counted_taps(left, g.kernel_w, g.width, g.pad_left, pool.pad_right,
                                        pool.count_include_pad));
        for (std::size_t channel = 0; channel < c; ++channel) {
            pixel[channel] /= divisor;
        }
    }
}

using AverageRow = void (*)(const float*, const AveragePool&, std::size_t, float*);

void average_row_portable(const float* x, const AveragePool& pool, std::size_t row, float* out) {
    average_row(x, pool, row, out);
}

#ifdef NIMBUS_X86_KERNELS
__attribute__((target("avx2"))) void average_row_avx2(const float* x, const AveragePool& pool,
                                                      std::size_t row, float* out) {
    average_row(x, pool, row, out);
}

__attribute__((target("avx512f"))) void average_row_avx512(const float* x,
                                                           const AveragePool& pool,
                                                           std::size_t row, float* out) {
    average_row(x, pool, row, out);
}
#endif

}  // namespace

void avg_pool2d(const float* x, const PoolGeometry& geometry, std::size_t pad_bottom,
                std::size_t pad_right, bool count_include_pad, float* out, std::size_t threads,
                Isa isa) {
    if (geometry.batch * geometry.out_h * geometry.out_w * geometry.channels == 0) {
        return;
    }
    AverageRow row_kernel = &average_row_portable;
#ifdef NIMBUS_X86_KERNELS
    if (sgemm_path(isa) == Isa::avx512_vnni) {
        row_kernel = &average_row_avx512;
    } else if (sgemm_path(isa) == Isa::avx2) {
        row_kernel = &average_row_avx2;
    }
#endif
    const AveragePool pool{geometry, pad_bottom, pad_right, count_include_pad};
    parallel_for(geometry.batch * geometry.out_h, std::max<std::size_t>(threads, 1),
                 [&](std::size_t row) { row_kernel(x, pool, row, out); });
}

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
