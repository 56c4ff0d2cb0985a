// The AVX-512 epilogue of the int8 GEMM, shared by the paths whose kernels end in int32 sums
// of 16 columns (AVX512-VNNI registers, AMX tiles): finished and stored in registers.
#pragma once

#include "qgemm_paths.h"
#include <cstdint>
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

// fma: the float activations (vector_math_avx512.h) inline into the epilogue.
#define NIMBUS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,fma")))

namespace nimbus::kernels::avx512 {

constexpr std::size_t kLanes = 16;

// The residual terms of `count` (at most 16) consecutive elements from `index`. A masked load
// reads exactly those bytes (a copy through a buffer called memcpy for every 16 outputs and
// made a ResNet-18 residual convolution 20% slower than the same one without).
NIMBUS_AVX512_VNNI inline __m512 residual_terms(const Residual& residual, std::size_t index,
                                         std::size_t count) {
    const auto mask = static_cast<__mmask64>((std::uint64_t{1} << count) - 1);
    const __m128i packed = _mm512_castsi512_si128(_mm512_maskz_loadu_epi8(
        mask, static_cast<const std::uint8_t*>(residual.data) + index));
    const __m512i values =
        residual.is_signed ? _mm512_cvtepi8_epi32(packed) : _mm512_cvtepu8_epi32(packed);
    const __m512i centered = _mm512_sub_epi32(values, _mm512_set1_epi32(residual.zero_point));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(centered), _mm512_set1_ps(residual.scale));
}

// Finishes the accumulators of one vector of 16 columns from `col` in each of Rows rows from
// `row`, and stores those that fall inside the n columns of the result. The per-column terms
// are loaded once for all rows and the output type is chosen once: a GEMM of small depth (a
// 1x1 convolution over 16 channels) spends as long here as in its products.
template <std::size_t Rows>
NIMBUS_AVX512_VNNI inline void store_column(const GemmTask& task, std::size_t row,
                                            std::size_t col, const __m512i (&sums)[Rows]) {
    if (col >= task.n) {
        return;
    }
    const std::size_t count = task.n - col < kLanes ? task.n - col : kLanes;
    const auto mask = static_cast<__mmask16>((1u << count) - 1);
    const __m512i offset = _mm512_loadu_si512(task.column_offset + col);
    const std::size_t first = row * task.n + col;
    if (task.type == OutputType::s32) {
        auto* out = static_cast<std::int32_t*>(task.out) + first;
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            _mm512_mask_storeu_epi32(out + r * task.n, mask, _mm512_add_epi32(sums[r], offset));
        }
        return;
    }
    // cvtdq2ps and cvtps2dq round half to even under the default MXCSR, like the reference.
    const __m512 scale = _mm512_loadu_ps(task.scale + col);
    __m512 scaled[Rows];
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
        scaled[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(sums[r], offset)), scale);
        if (task.residual.data != nullptr) {
            scaled[r] = _mm512_add_ps(scaled[r],
                                      residual_terms(task.residual, first + r * task.n, count));
        }
    }
    if (task.activation != Activation::none) {
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            scaled[r] = activate_ps(scaled[r], task.activation);
        }
    }
    if (task.type == OutputType::f32) {
        auto* out = static_cast<float*>(task.out) + first;
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            _mm512_mask_storeu_ps(out + r * task.n, mask, scaled[r]);
        }
        return;
    }
    if (task.activation != Activation::none) {
        // Quantized as quantize.cpp quantizes f32 values: an IEEE division, round half to even,
        // + zero point, clamp to the type (lo and hi), NaN to 0.
        const __m512 step = _mm512_set1_ps(task.output_scale);
        const __m512 zero_point = _mm512_set1_ps(static_cast<float>(task.zero_point));
        const __m512 lo = _mm512_set1_ps(static_cast<float>(task.lo));
        const __m512 hi = _mm512_set1_ps(static_cast<float>(task.hi));
        auto* out = static_cast<std::uint8_t*>(task.out) + first;
#pragma GCC unroll 12
        for (std::size_t r = 0; r < Rows; ++r) {
            const __m512 q = _mm512_add_ps(
                _mm512_roundscale_ps(_mm512_div_ps(scaled[r], step),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                zero_point);
            __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
            v = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(q, q, _CMP_ORD_Q), v);
            _mm512_mask_cvtepi32_storeu_epi8(out + r * task.n, mask, v);
        }
        return;
    }
    // Clamping before rounding equals clamping after it (the bounds are integers), and keeps
    // the value inside int32 for the conversion.
    const __m512 lo = _mm512_set1_ps(static_cast<float>(task.lo - task.zero_point));
    const __m512 hi = _mm512_set1_ps(static_cast<float>(task.hi - task.zero_point));
    const __m512i zero_point = _mm512_set1_epi32(task.zero_point);
    auto* out = static_cast<std::uint8_t*>(task.out) + first;
#pragma GCC unroll 12
    for (std::size_t r = 0; r < Rows; ++r) {
        const __m512 clamped = _mm512_min_ps(_mm512_max_ps(scaled[r], lo), hi);
        const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(clamped), zero_point);
        _mm512_mask_cvtepi32_storeu_epi8(out + r * task.n, mask, q);
    }
}

}  // namespace nimbus::kernels::avx512

#endif  // NIMBUS_X86_KERNELS
