// Vectorized math shared by the AVX-512 float kernels (sgemm_avx512.cpp, attention_avx512.cpp;
// sconv_winograd.cpp takes its target attribute). Every function carries its own target
// attribute, so including this header puts no AVX-512 instruction into code that runs on other
// paths.
#pragma once

#include "isa.h"

#ifdef NIMBUS_X86_KERNELS

// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define NIMBUS_AVX512F __attribute__((target("avx512f,fma")))

namespace nimbus::kernels {

// exp(x) for x in float range: 2^n * p(r) with r = x - n ln2 in [-ln2/2, ln2/2] and a degree-6
// polynomial (Cephes expf), within about 2 ulp; exact 0 / inf past the ends come out as
// tiny / huge values, which callers saturate themselves where that matters.
NIMBUS_AVX512F inline __m512 exp_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
