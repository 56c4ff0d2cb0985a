// What the attention / normalization driver (attention.cpp) calls on each ISA path: row
// primitives that it combines. Declarations only (see sgemm_paths.h).
#pragma once

#include <cstddef>

#include "isa.h"

namespace nimbus::kernels {

// The B operands of attention's two products are packed in strips of this many columns (the
// AVX-512 tile's), each strip's rows contiguous: read in place, the rows of v (and of k^T packed
// as one [D, S] matrix) lie a multiple of 512 bytes apart (BERT-base's v: 3 KiB), so a strip over
// S rows maps onto a few L1 sets. With whole matrices per item, BERT-base attention at batch 8
// on two threads: 5.1 -> 3.0-3.8 ms (6.9 -> 6.2 ms on one).
constexpr std::size_t kAttentionStrip = 32;

// Rows [first_row, end_row) of k (row_stride apart, each d contiguous), columns from
// first_column on, written into k^T [d, S] packed in strips: element (j, c) of k goes to
// strips[j / kAttentionStrip * d * kAttentionStrip + c * kAttentionStrip + j % kAttentionStrip].
// One element at a time: every path's packing of what its vector blocks leave over.
void pack_transposed_elements(const float* k, std::size_t row_stride, std::size_t d,
                              std::size_t first_row, std::size_t end_row,
                              std::size_t first_column, float* strips);

// All of k packed so (the paths without a vector transpose).
inline void pack_transposed_elementwise(const float* k, std::size_t row_stride, std::size_t s,
                                        std::size_t d, float* strips) {
    pack_transposed_elements(k, row_stride, d, 0, s, 0, strips);
}

struct RowKernels {
    // c[m, n] = a[m, k] @ b[k, n], row-major with the given row strides; each element summed
    // over k in order, so the result does not depend on where a tile starts.
    void (*gemm)(const float* a, std::size_t a_stride, const float* b, std::size_t b_stride,
                 float* c, std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k);
    // k^T packed in strips from all s rows and d columns of k (pack_transposed_elements).
    void (*pack_transposed)(const float* k, std::size_t row_stride, std::size_t s, std::size_t d,
                            float* strips);
    // The maximum of x[0, n), NaN if any is NaN (n >= 1).
    float (*row_max)(const float* x, std::size_t n);
    // x = x * factor + add (each operation rounded, as numpy rounds them; x * factor alone when
    // add is null), returning the maximum of the new x as row_max does.
    float (*scale_add_max)(float* x, std::size_t n, float factor, const float* add);
    // out = exp(x - shift) (exactly 0 where that underflows), returning the sum; for a shift
    // that is finite and at least every x.
    float (*exp_sum)(const float* x, float* out, std::size_t n, float shift);
    // x *= factor.
    void (*scale)(float* x, std::size_t n, float factor);
    // One row of layer_norm (attention.h); weight and bias may be null.
    void (*layer_norm_row)(const float* x, std::size_t n, const float* weight, const float* bias,
                           float eps, float* out);
};

extern const RowKernels kRowKernelsPortable;
#ifdef NIMBUS_X86_KERNELS
extern const RowKernels kRowKernelsAvx2;
extern const RowKernels kRowKernelsAvx512;
#endif

}  // namespace nimbus::kernels
