// What the attention / normalization driver (attention.cpp) calls on each ISA path: row
// primitives that it combines. Declarations only (see sgemm_paths.h).
#pragma once

#include <cstddef>

#include "isa.h"

namespace nimbus::kernels {

struct RowKernels {
    // c[m, n] = a[m, k] @ b[k, n], row-major with the given row strides; each element summed
    // over k in order, so the result does not depend on where a tile starts.
    void (*gemm)(const float* a, std::size_t a_stride, const float* b, std::size_t b_stride,
                 float* c, std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k);
    // The maximum of x[0, n), NaN if any is NaN (n >= 1).
    float (*row_max)(const float* x, std::size_t n);
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
