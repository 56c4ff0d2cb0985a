// Float32 attention and the row normalizations of a transformer (softmax, layer norm), on the
// worker pool. Each output row is computed by one thread in a fixed order, so results do not
// depend on `threads`.
#pragma once

#include <cstddef>

#include "isa.h"

namespace nimbus::kernels {

enum class MaskKind { none, boolean, additive };

// A mask broadcast to [batch, L, S] through strides (in elements), never materialized: entry
// (b, i, j) is data[batch_offsets[b] + i * row_stride + j * column_stride].
struct AttentionMask {
    MaskKind kind = MaskKind::none;
    const void* data = nullptr;            // bool (true = attend) or float (added to the scores)
    const std::size_t* batch_offsets = nullptr;
    std::size_t row_stride = 0;
    std::size_t column_stride = 0;
};

// Where the matrices of a [batch, rows, columns] operand lie: matrix b starts at element
// offsets[b], its rows row_stride elements apart, each row contiguous. Views such as the heads
// of a [N, L, H, D] projection seen as [N, H, L, D] need no copy.
struct MatrixLayout {
    const std::size_t* offsets = nullptr;
    std::size_t row_stride = 0;
};

struct AttentionShape {
    std::size_t batch;  // product of the leading dimensions
    std::size_t l;      // query rows
    std::size_t s;      // key rows, at least 1
    std::size_t d;      // depth of q and k
    std::size_t dv;     // depth of v
};

// out[b] = softmax(q[b] @ k[b]^T * scale + mask[b]) @ v[b] for q [batch, L, D], k [batch, S, D],
// v [batch, S, Dv], out [batch, L, Dv], each laid out as its MatrixLayout says (the matrices of
// out must not overlap). Rows whose scores are all -inf give zeros; a row with a NaN or +inf
// score gives NaN, as numpy's max-shifted softmax does.
void attention(const float* q, const MatrixLayout& q_layout, const float* k,
               const MatrixLayout& k_layout, const float* v, const MatrixLayout& v_layout,
               const AttentionMask& mask, float scale, const AttentionShape& shape, float* out,
               const MatrixLayout& out_layout, std::size_t threads, Isa isa);

// out = (x - mean) / sqrt(var + eps) * weight + bias over each row of x [rows, channels], the
// variance taken of x - mean (two passes); weight and bias [channels] or null.
void layer_norm(const float* x, std::size_t rows, std::size_t channels, const float* weight,
                const float* bias, float eps, float* out, std::size_t threads, Isa isa);

// softmax over each row of x [rows, channels], shifted by the row maximum.
void softmax(const float* x, std::size_t rows, std::size_t channels, float* out,
             std::size_t threads, Isa isa);

}  // namespace nimbus::kernels
