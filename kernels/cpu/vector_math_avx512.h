// Vectorized math, activations and lane masks shared by the AVX-512 kernels (sgemm_avx512.cpp,
// attention_avx512.cpp, the direct convolutions, the int8 GEMM's epilogue; sconv_winograd.cpp
// takes its target attribute). Every vector function carries its own target attribute, so including this header
// puts no AVX-512 instruction into code that runs on other paths.
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "sgemm.h"
#include "vector_math_polynomials.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define NIMBUS_AVX512F __attribute__((target("avx512f,fma")))

namespace nimbus::kernels {

// The first `count` lanes of a 16-float vector (all of them from 16 on), for masked loads and
// stores of row tails.
inline __mmask16 first_lanes(std::size_t count) {
    return count >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// p(x) by Horner's rule over coefficients from the highest power down.
template <std::size_t N>
NIMBUS_AVX512F inline __m512 horner(__m512 x, const float (&coefficients)[N]) {
    __m512 p = _mm512_set1_ps(coefficients[0]);
#pragma GCC unroll 8
    for (std::size_t i = 1; i < N; ++i) {
        p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(coefficients[i]));
    }
    return p;
}

// exp(x) for x in float range (polynomials::kExp); exact 0 / inf past the ends come out as
// tiny / huge values, which callers saturate themselves where that matters.
NIMBUS_AVX512F inline __m512 exp_ps(__m512 x) {
    using namespace polynomials;
    // max_ps and min_ps return their second operand when one is NaN: x last keeps a NaN.
    x = _mm512_min_ps(_mm512_set1_ps(kExpClampHigh),
                      _mm512_max_ps(_mm512_set1_ps(kExpClampLow), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), r);
    const __m512 p = _mm512_fmadd_ps(horner(r, kExp), _mm512_mul_ps(r, r),
                                     _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

// ---- activations (the float kernels' epilogues, the int8 GEMM's float-activation epilogue) ----

NIMBUS_AVX512F inline __m512 sigmoid_ps(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// tanh (polynomials::kTanh): the polynomial near zero, 1 - 2 / (exp(2|x|) + 1) above.
NIMBUS_AVX512F inline __m512 tanh_ps(__m512 x) {
    using namespace polynomials;
    const __m512 abs_x = _mm512_abs_ps(x);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 e = exp_ps(_mm512_add_ps(abs_x, abs_x));
    __m512 large = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
    // Copy the sign of x onto |tanh|.
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
    large = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(large), sign));
    const __m512 z = _mm512_mul_ps(x, x);
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(horner(z, kTanh), z), x, x);
    const __mmask16 is_small = _mm512_cmp_ps_mask(abs_x, _mm512_set1_ps(kTanhSmall), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(is_small, large, small);
}

// a clamped to [-limit, limit]; max_ps and min_ps return their second operand when one is NaN,
// so a NaN a stays NaN.
NIMBUS_AVX512F inline __m512 clamp_ps(__m512 a, float limit) {
    return _mm512_min_ps(_mm512_set1_ps(limit), _mm512_max_ps(_mm512_set1_ps(-limit), a));
}

// erf (polynomials::kErfP / kErfQ) over x clamped to the fit's bound, the result to [-1, 1]:
// rounding may carry it an ulp past 1, and gelu's 1 + erf must not go below 0.
NIMBUS_AVX512F inline __m512 erf_ps(__m512 x) {
    using namespace polynomials;
    const __m512 z = clamp_ps(x, kErfBound);
    const __m512 z2 = _mm512_mul_ps(z, z);
    return clamp_ps(_mm512_div_ps(_mm512_mul_ps(z, horner(z2, kErfP)), horner(z2, kErfQ)), 1.0f);
}

NIMBUS_AVX512F inline __m512 activate_ps(__m512 x, Activation activation) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 half = _mm512_set1_ps(0.5f);
    switch (activation) {
        case Activation::none:
            return x;
        case Activation::relu:  // x second: maxps and minps return it when either is NaN
            return _mm512_max_ps(zero, x);
        case Activation::relu6:
            return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(zero, x));
        case Activation::gelu: {
            const __m512 e = erf_ps(_mm512_mul_ps(x, _mm512_set1_ps(polynomials::kSqrtHalf)));
            return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        }
        case Activation::gelu_tanh: {
            const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
            const __m512 inner =
                _mm512_mul_ps(_mm512_set1_ps(polynomials::kSqrtTwoOverPi),
                              _mm512_fmadd_ps(cube, _mm512_set1_ps(polynomials::kGeluTanhCubic), x));
            return _mm512_mul_ps(_mm512_mul_ps(half, x),
                                 _mm512_add_ps(_mm512_set1_ps(1.0f), tanh_ps(inner)));
        }
        case Activation::silu:
            return _mm512_mul_ps(x, sigmoid_ps(x));
        case Activation::sigmoid:
            return sigmoid_ps(x);
        case Activation::tanh:
            return tanh_ps(x);
        case Activation::hardswish: {
            const __m512 gate = _mm512_min_ps(
                _mm512_max_ps(_mm512_add_ps(x, _mm512_set1_ps(3.0f)), zero), _mm512_set1_ps(6.0f));
            return _mm512_mul_ps(x, _mm512_div_ps(gate, _mm512_set1_ps(6.0f)));
        }
    }
    return x;
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
