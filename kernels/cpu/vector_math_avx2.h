// Vectorized math shared by the AVX2 float kernels (sgemm_avx2.cpp, attention_avx2.cpp,
// sconv_depthwise_avx2.cpp): the approximations of vector_math_polynomials.h, as the AVX-512
// path evaluates them (vector_math_avx512.h, sgemm_avx512.cpp), at half the width. Every
// function carries its own target attribute, so including this header puts no AVX2
// instruction into code that runs on other paths.
#pragma once

#include <cstddef>

#include "isa.h"
#include "sgemm.h"
#include "vector_math_polynomials.h"

#ifdef NIMBUS_X86_KERNELS

#include <immintrin.h>

#define NIMBUS_AVX2 __attribute__((target("avx2,fma")))

namespace nimbus::kernels {

// p(x) by Horner's rule over coefficients from the highest power down.
template <std::size_t N>
NIMBUS_AVX2 inline __m256 horner(__m256 x, const float (&coefficients)[N]) {
    __m256 p = _mm256_set1_ps(coefficients[0]);
#pragma GCC unroll 8
    for (std::size_t i = 1; i < N; ++i) {
        p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(coefficients[i]));
    }
    return p;
}

// exp(x) (polynomials::kExp), with 2^n built from its exponent bits, as AVX2 has no scalef;
// n stays within [-126, 127] after the clamp.
NIMBUS_AVX2 inline __m256 exp_ps(__m256 x) {
    using namespace polynomials;
    // max_ps and min_ps return their second operand when one is NaN: x last keeps a NaN.
    x = _mm256_min_ps(_mm256_set1_ps(kExpClampHigh),
                      _mm256_max_ps(_mm256_set1_ps(kExpClampLow), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2High), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Low), r);
    const __m256 p = _mm256_fmadd_ps(horner(r, kExp), _mm256_mul_ps(r, r),
                                     _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i exponent = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

NIMBUS_AVX2 inline __m256 abs_ps(__m256 x) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}

// x with the sign of `sign`'s bit 31 or-ed in (magnitude >= 0).
NIMBUS_AVX2 inline __m256 with_sign_of(__m256 magnitude, __m256 sign) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
}

// a clamped to [-limit, limit]; max_ps and min_ps return their second operand when one is NaN,
// so a NaN a stays NaN.
NIMBUS_AVX2 inline __m256 clamp_ps(__m256 a, float limit) {
    return _mm256_min_ps(_mm256_set1_ps(limit), _mm256_max_ps(_mm256_set1_ps(-limit), a));
}

// erf (polynomials::kErfP / kErfQ) over x clamped to the fit's bound, the result to [-1, 1]:
// rounding may carry it an ulp past 1, and gelu's 1 + erf must not go below 0.
NIMBUS_AVX2 inline __m256 erf_ps(__m256 x) {
    using namespace polynomials;
    const __m256 z = clamp_ps(x, kErfBound);
    const __m256 z2 = _mm256_mul_ps(z, z);
    return clamp_ps(_mm256_div_ps(_mm256_mul_ps(z, horner(z2, kErfP)), horner(z2, kErfQ)), 1.0f);
}

NIMBUS_AVX2 inline __m256 sigmoid_ps(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// tanh (polynomials::kTanh): the polynomial near zero, 1 - 2 / (exp(2|x|) + 1) above.
NIMBUS_AVX2 inline __m256 tanh_ps(__m256 x) {
    using namespace polynomials;
    const __m256 abs_x = abs_ps(x);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = exp_ps(_mm256_add_ps(abs_x, abs_x));
    const __m256 large = with_sign_of(
        _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one))), x);
    const __m256 z = _mm256_mul_ps(x, x);
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(horner(z, kTanh), z), x, x);
    return _mm256_blendv_ps(large, small,
                            _mm256_cmp_ps(abs_x, _mm256_set1_ps(kTanhSmall), _CMP_LT_OQ));
}

NIMBUS_AVX2 inline __m256 activate_ps(__m256 x, Activation activation) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (activation) {
        case Activation::none:
            return x;
        case Activation::relu:  // x second: maxps and minps return it when either is NaN
            return _mm256_max_ps(zero, x);
        case Activation::relu6:
            return _mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(zero, x));
        case Activation::gelu: {
            const __m256 e = erf_ps(_mm256_mul_ps(x, _mm256_set1_ps(polynomials::kSqrtHalf)));
            return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, e));
        }
        case Activation::gelu_tanh: {
            const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            const __m256 inner =
                _mm256_mul_ps(_mm256_set1_ps(polynomials::kSqrtTwoOverPi),
                              _mm256_fmadd_ps(cube, _mm256_set1_ps(polynomials::kGeluTanhCubic), x));
            return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh_ps(inner)));
        }
        case Activation::silu:
            return _mm256_mul_ps(x, sigmoid_ps(x));
        case Activation::sigmoid:
            return sigmoid_ps(x);
        case Activation::tanh:
            return tanh_ps(x);
        case Activation::hardswish: {
            const __m256 gate = _mm256_min_ps(
                _mm256_max_ps(_mm256_add_ps(x, _mm256_set1_ps(3.0f)), zero), _mm256_set1_ps(6.0f));
            return _mm256_mul_ps(x, _mm256_div_ps(gate, _mm256_set1_ps(6.0f)));
        }
    }
    return x;
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
