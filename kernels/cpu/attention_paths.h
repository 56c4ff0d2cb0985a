// What the attention / normalization driver (attention.cpp) calls on each ISA path: row
// primitives that it combines. Declarations only (see sgemm_paths.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "attention.h"
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
// Elements are 32-bit words (floats, or the 4-byte groups of the integer attention; row_stride
// counts words), copied one at a time: every path's packing of what its vector blocks leave over.
void pack_transposed_elements(const void* k, std::size_t row_stride, std::size_t d,
                              std::size_t first_row, std::size_t end_row,
                              std::size_t first_column, void* strips);

// All of float k packed so (the paths without a vector transpose).
void pack_transposed_elementwise(const float* k, std::size_t row_stride, std::size_t s,
                                 std::size_t d, float* strips);

#ifdef NIMBUS_X86_KERNELS
// All of k packed so, by 16 x 16 transposes in AVX-512 registers.
void pack_transposed_words_avx512(const void* k, std::size_t row_stride, std::size_t s,
                                  std::size_t d, void* strips);
#endif

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

// How an attention over `batch` score matrices [l, s] is cut into items of whole query rows,
// batch-major: at least 32 rows, more while the scores tile [rows, s] stays within 128 KiB (in
// L2 while P @ V reads it) and each of the threads still gets 4 or more items, so that a thread
// packs k and v (in strips) once for all of a matrix's rows.
struct AttentionItems {
    AttentionItems(std::size_t batch, std::size_t l, std::size_t s, std::size_t threads);

    // Matrix b, and rows [first, first + rows) of it, of item `index`.
    struct Item {
        std::size_t b, first, rows;
    };
    Item operator[](std::size_t index) const {
        const std::size_t first = index % blocks * query_block;
        return {index / blocks, first, std::min(query_block, l - first)};
    }

    std::size_t l;
    std::size_t query_block;  // rows per item
    std::size_t blocks;       // items per matrix
    std::size_t count;        // items
    std::size_t threads;      // participants: at most one per item
};

// The row primitives of `isa`'s float path.
const RowKernels& row_kernels(Isa isa);

// row[j] = row[j] * scale, then the mask of query row i of batch b, as numpy's attention does
// it (scale, then add or replace by -inf) with the same rounding; returns the new row's maximum.
float scale_and_mask(const RowKernels& path, float* row, std::size_t s, float scale,
                     const AttentionMask& mask, std::size_t b, std::size_t i);

}  // namespace nimbus::kernels
