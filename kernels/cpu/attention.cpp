// The attention / normalization driver: cuts the work into items of whole rows, hands them out
// to threads and runs each item on the row primitives of the ISA path (attention_paths.h).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "attention_paths.h"
#include "cache_line.h"
#include "sgemm.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// v [S, Dv] packed in strips from its rows (row_stride apart, each Dv contiguous).
void pack_rows(const float* v, std::size_t row_stride, std::size_t s, std::size_t dv,
               float* strips) {
    for (std::size_t first = 0; first < dv; first += kAttentionStrip) {
        const std::size_t width = std::min(kAttentionStrip, dv - first);
        float* strip = strips + first * s;
        for (std::size_t j = 0; j < s; ++j) {
            std::copy(v + j * row_stride + first, v + j * row_stride + first + width,
                      strip + j * kAttentionStrip);
        }
    }
}

// Asks the caches for `rows` rows of `length` floats, `stride` apart.
void prefetch_rows(const float* x, std::size_t stride, std::size_t rows, std::size_t length) {
    constexpr std::size_t kLineFloats = 16;
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < length; c += kLineFloats) {
            __builtin_prefetch(x + r * stride + c);
        }
    }
}

// c[m, n] = a[m, k] @ B for B packed in strips.
void strip_gemm(const RowKernels& path, const float* a, std::size_t a_stride, const float* strips,
                float* c, std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k) {
    for (std::size_t column = 0; column < n; column += kAttentionStrip) {
        path.gemm(a, a_stride, strips + column * k, kAttentionStrip, c + column, c_stride, m,
                  std::min(kAttentionStrip, n - column), k);
    }
}
// Floats per normalization item: enough that taking an item costs little next to its rows.
constexpr std::size_t kItemFloats = 4096;

// Rows [0, rows) of x [rows, channels > 0] in items of whole rows: body(first, end).
void for_row_blocks(std::size_t rows, std::size_t channels, std::size_t threads,
                    const std::function<void(std::size_t, std::size_t)>& body) {
    const std::size_t per_item = std::max<std::size_t>(kItemFloats / channels, 1);
    parallel_for((rows + per_item - 1) / per_item, threads, [&](std::size_t item) {
        body(item * per_item, std::min(rows, (item + 1) * per_item));
    });
}

}  // namespace

AttentionItems::AttentionItems(std::size_t batch, std::size_t l, std::size_t s,
                               std::size_t threads)
    : l(l) {
    constexpr std::size_t kQueryBlock = 32;
    constexpr std::size_t kScoreBytes = 128 * 1024;
    constexpr std::size_t kItemsPerThread = 4;
    threads = std::max<std::size_t>(threads, 1);
    query_block = std::max(kQueryBlock, std::min({l, kScoreBytes / sizeof(float) / s,
                                                  batch * l / (threads * kItemsPerThread)}));
    blocks = (l + query_block - 1) / query_block;
    count = batch * blocks;
    this->threads = std::min(threads, count);
}

const RowKernels& row_kernels(Isa isa) {
    switch (sgemm_path(isa)) {  // the float path: AVX2 without FMA runs the portable one
#ifdef NIMBUS_X86_KERNELS
        case Isa::avx512_vnni:
            return kRowKernelsAvx512;
        case Isa::avx2:
            return kRowKernelsAvx2;
#endif
        default:
            return kRowKernelsPortable;
    }
}

constexpr float kInfinity = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

float scale_and_mask(const RowKernels& path, float* row, std::size_t s, float scale,
                     const AttentionMask& mask, std::size_t b, std::size_t i) {
    if (mask.kind == MaskKind::none) {
        return path.scale_add_max(row, s, scale, nullptr);
    }
    const std::size_t offset = mask.batch_offsets[b] + i * mask.row_stride;
    const std::size_t step = mask.column_stride;
    if (mask.kind == MaskKind::additive) {
        const float* add = static_cast<const float*>(mask.data) + offset;
        if (step == 1) {  // the common key-padding mask
            return path.scale_add_max(row, s, scale, add);
        }
        for (std::size_t j = 0; j < s; ++j) {
            row[j] = row[j] * scale + add[j * step];
        }
    } else {
        const bool* keep = static_cast<const bool*>(mask.data) + offset;
        for (std::size_t j = 0; j < s; ++j) {
            row[j] = keep[j * step] ? row[j] * scale : -kInfinity;
        }
    }
    return path.row_max(row, s);
}

void attention(const float* q, const MatrixLayout& q_layout, const float* k,
               const MatrixLayout& k_layout, const float* v, const MatrixLayout& v_layout,
               const AttentionMask& mask, float scale, const AttentionShape& shape, float* out,
               const MatrixLayout& out_layout, std::size_t threads, Isa isa) {
    const auto [batch, l, s, d, dv] = shape;
    if (batch * l * dv == 0) {
        return;
    }
    const RowKernels& path = row_kernels(isa);
    const AttentionItems items(batch, l, s, threads);
    const std::size_t query_block = items.query_block;
    const std::size_t count = items.threads;
    // Per thread: k^T [D, S] and v [S, Dv] packed in strips (the B operands of q @ k^T and of
    // P @ v), the scores [query_block, S] and the reciprocal row sums. Allocated here, where a
    // failed allocation can still be reported.
    const std::size_t padded_s = round_up(s, kAttentionStrip);
    const std::size_t padded_dv = round_up(dv, kAttentionStrip);
    const std::size_t slot_floats =
        whole_lines<float>(d * padded_s + s * padded_dv + query_block * s + query_block);
    const CacheLineArray<float> scratch = cache_line_array<float>(count * slot_floats);
    // The matrix whose k and v each participant holds packed. Each participant takes a run of
    // whole matrices, so the layer after reads mostly rows that its own thread wrote (BERT-base
    // int8 at batch 8, two threads: 11.7 -> 11.2 ms against items from one shared counter).
    std::vector<std::size_t> packed(count, batch);
    parallel_items(items.count, count, [&](std::size_t participant, std::size_t item) {
        float* const k_t = scratch.get() + participant * slot_floats;
        float* const values = k_t + d * padded_s;
        float* const scores = values + s * padded_dv;
        float* const inverse_sums = scores + query_block * s;
        // Items go batch-major, so a participant's next item often reuses its packed k and v.
        const auto [b, first, rows] = items[item];
        if (packed[participant] != b) {
            path.pack_transposed(k + k_layout.offsets[b], k_layout.row_stride, s, d, k_t);
            pack_rows(v + v_layout.offsets[b], v_layout.row_stride, s, dv, values);
            packed[participant] = b;
            // A participant takes the matrices of its run in order: ask for the next one's rows
            // now, which its packing would otherwise wait for, one cache miss at a time
            // (BERT-base at batch 8, two threads: 3.0-3.8 -> 2.8-3.3 ms).
            const std::size_t ahead = std::min(batch - 1, b + 1);
            prefetch_rows(k + k_layout.offsets[ahead], k_layout.row_stride, s, d);
            prefetch_rows(v + v_layout.offsets[ahead], v_layout.row_stride, s, dv);
            prefetch_rows(q + q_layout.offsets[ahead], q_layout.row_stride, l, d);
        }
        strip_gemm(path, q + q_layout.offsets[b] + first * q_layout.row_stride,
                   q_layout.row_stride, k_t, scores, s, rows, s, d);
        for (std::size_t i = 0; i < rows; ++i) {
            float* row = scores + i * s;
            const float peak = scale_and_mask(path, row, s, scale, mask, b, first + i);
            inverse_sums[i] = 1.0f;
            if (peak == -kInfinity) {
                std::fill(row, row + s, 0.0f);  // fully masked: zeros, not 0 / 0
            } else if (!std::isfinite(peak)) {
                std::fill(row, row + s, kNaN);
            } else {
                // Normalizing the output row instead of P costs Dv multiplies, not S.
                inverse_sums[i] = 1.0f / path.exp_sum(row, row, s, peak);
            }
        }
        const std::size_t out_stride = out_layout.row_stride;
        float* target = out + out_layout.offsets[b] + first * out_stride;
        strip_gemm(path, scores, s, values, target, out_stride, rows, dv, s);
        for (std::size_t i = 0; i < rows; ++i) {
            path.scale(target + i * out_stride, dv, inverse_sums[i]);
        }
    });
}

void layer_norm(const float* x, std::size_t rows, std::size_t channels, const float* weight,
                const float* bias, float eps, float* out, std::size_t threads, Isa isa) {
    if (channels == 0) {
        return;
    }
    const RowKernels& path = row_kernels(isa);
    for_row_blocks(rows, channels, threads, [&](std::size_t first, std::size_t end) {
        for (std::size_t r = first; r < end; ++r) {
            path.layer_norm_row(x + r * channels, channels, weight, bias, eps,
                                out + r * channels);
        }
    });
}

void softmax(const float* x, std::size_t rows, std::size_t channels, float* out,
             std::size_t threads, Isa isa) {
    if (channels == 0) {
        return;
    }
    const RowKernels& path = row_kernels(isa);
    for_row_blocks(rows, channels, threads, [&](std::size_t first, std::size_t end) {
        for (std::size_t r = first; r < end; ++r) {
            const float* row = x + r * channels;
            float* target = out + r * channels;
            const float peak = path.row_max(row, channels);
            if (!std::isfinite(peak)) {
                // x - max is NaN somewhere (NaN, inf - inf or -inf - -inf): numpy's row is NaN.
                std::fill(target, target + channels, kNaN);
                continue;
            }
            path.scale(target, channels, 1.0f / path.exp_sum(row, target, channels, peak));
        }
    });
}

}  // namespace nimbus::kernels
