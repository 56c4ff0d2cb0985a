// The AVX-512 use of the interleave tables (interleave.h): vector j of the NHWC values of
// Outputs vectors of 16 pixels, one per channel. The function carries its own target attribute
// (AVX-512F alone, so that every AVX-512 kernel can inline it), so including this header puts
// no AVX-512 instruction elsewhere. Integer vectors go through it cast to float: the permutes
// move bits.
#pragma once

#include <algorithm>
#include <cstddef>

#include "interleave.h"
#include "vector_math_avx512.h"

#ifdef NIMBUS_X86_KERNELS

namespace nimbus::kernels {

template <std::size_t Outputs>
__attribute__((target("avx512f"))) inline __m512 interleaved_ps(const __m512 (&channels)[Outputs],
                                                                std::size_t j) {
    const Interleave<Outputs>& table = kInterleave<Outputs>;
    const __m512i index = _mm512_loadu_si512(table.index[j]);
    __m512 value = _mm512_permutex2var_ps(channels[0], index, channels[Outputs > 1 ? 1 : 0]);
#pragma GCC unroll 4
    for (std::size_t pair = 1; pair < Interleave<Outputs>::kPairs; ++pair) {
        const __m512 second = channels[std::min(2 * pair + 1, Outputs - 1)];
        value = _mm512_mask_mov_ps(value, table.pair_lanes[j][pair],
                                   _mm512_permutex2var_ps(channels[2 * pair], index, second));
    }
    return value;
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS
