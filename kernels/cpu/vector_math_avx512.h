// Vectorized math and lane masks shared by the AVX-512 kernels (sgemm_avx512.cpp,
// attention_avx512.cpp, the direct convolutions; sconv_winograd.cpp takes its target
// attribute). Every vector function carries its own target attribute, so including this header
// puts no AVX-512 instruction into code that runs on other paths.
#pragma once

#include <cstddef>

#include "isa.h"
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
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpClampLow)),
                      _mm512_set1_ps(kExpClampHigh));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), r);
    const __m512 p = _mm512_fmadd_ps(horner(r, kExp), _mm512_mul_ps(r, r),
                                     _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
