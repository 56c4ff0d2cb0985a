// The attention / normalization driver: cuts the work into items of whole rows, hands them out
// to threads and runs each item on the row primitives of the ISA path (attention_paths.h).
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>

#include "attention_paths.h"
#include "sgemm.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

// Query rows per attention item: the scores tile [kQueryBlock, S] stays in L2 while P @ V reads it.
constexpr std::size_t kQueryBlock = 32;
// Floats per normalization item: enough that taking an item costs little next to its rows.
constexpr std::size_t kItemFloats = 4096;

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

// row[j] = row[j] * scale, then the mask of query row i of batch b, as numpy's attention does
// it (scale, then add or replace by -inf) with the same rounding.
void scale_and_mask(float* row, std::size_t s, float scale, const AttentionMask& mask,
                    std::size_t b, std::size_t i) {
    const std::size_t offset = mask.kind == MaskKind::none
                                   ? 0
                                   : mask.batch_offsets[b] + i * mask.row_stride;
    const std::size_t step = mask.column_stride;
    switch (mask.kind) {
        case MaskKind::none:
            for (std::size_t j = 0; j < s; ++j) {
                row[j] *= scale;
            }
            break;
        case MaskKind::boolean: {
            const bool* keep = static_cast<const bool*>(mask.data) + offset;
            for (std::size_t j = 0; j < s; ++j) {
                row[j] = keep[j * step] ? row[j] * scale : -kInfinity;
            }
            break;
        }
        case MaskKind::additive: {
            const float* add = static_cast<const float*>(mask.data) + offset;
            for (std::size_t j = 0; j < s; ++j) {
                row[j] = row[j] * scale + add[j * step];
            }
            break;
        }
    }
}

// Rows [0, rows) of x [rows, channels > 0] in items of whole rows: body(first, end).
void for_row_blocks(std::size_t rows, std::size_t channels, std::size_t threads,
                    const std::function<void(std::size_t, std::size_t)>& body) {
    const std::size_t per_item = std::max<std::size_t>(kItemFloats / channels, 1);
    parallel_for((rows + per_item - 1) / per_item, threads, [&](std::size_t item) {
        body(item * per_item, std::min(rows, (item + 1) * per_item));
    });
}

}  // namespace

void attention(const float* q, const MatrixLayout& q_layout, const float* k,
               const MatrixLayout& k_layout, const float* v, const MatrixLayout& v_layout,
               const AttentionMask& mask, float scale, const AttentionShape& shape, float* out,
               const MatrixLayout& out_layout, std::size_t threads, Isa isa) {
    const auto [batch, l, s, d, dv] = shape;
    if (batch * l * dv == 0) {
        return;
    }
    const RowKernels& path = row_kernels(isa);
    const std::size_t blocks = (l + kQueryBlock - 1) / kQueryBlock;
    const std::size_t items = batch * blocks;
    const std::size_t count = std::min(std::max<std::size_t>(threads, 1), items);
    // Per thread: k^T [D, S] (the B operand of q @ k^T), the scores [kQueryBlock, S] and the
    // reciprocal row sums. Allocated here, where a failed allocation can still be reported.
    const std::size_t slot_floats = d * s + kQueryBlock * s + kQueryBlock;
    const std::unique_ptr<float[]> scratch(new float[count * slot_floats]);
    std::atomic<std::size_t> next_slot{0};
    std::atomic<std::size_t> next_item{0};
    const std::function<void()> run_items = [&] {
        float* const k_t = scratch.get() + next_slot++ * slot_floats;
        float* const scores = k_t + d * s;
        float* const inverse_sums = scores + kQueryBlock * s;
        // Items go out batch-major, so a thread's next item often reuses its k^T.
        std::size_t transposed = batch;
        for (std::size_t item = next_item++; item < items; item = next_item++) {
            const std::size_t b = item / blocks;
            const std::size_t first = item % blocks * kQueryBlock;
            const std::size_t rows = std::min(kQueryBlock, l - first);
            if (transposed != b) {
                const float* keys = k + k_layout.offsets[b];
                for (std::size_t j = 0; j < s; ++j) {
                    for (std::size_t c = 0; c < d; ++c) {
                        k_t[c * s + j] = keys[j * k_layout.row_stride + c];
                    }
                }
                transposed = b;
            }
            path.gemm(q + q_layout.offsets[b] + first * q_layout.row_stride, q_layout.row_stride,
                      k_t, s, scores, s, rows, s, d);
            for (std::size_t i = 0; i < rows; ++i) {
                float* row = scores + i * s;
                scale_and_mask(row, s, scale, mask, b, first + i);
                const float peak = path.row_max(row, s);
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
            path.gemm(scores, s, v + v_layout.offsets[b], v_layout.row_stride, target, out_stride,
                      rows, dv, s);
            for (std::size_t i = 0; i < rows; ++i) {
                path.scale(target + i * out_stride, dv, inverse_sums[i]);
            }
        }
    };
    run_on_pool(count - 1, run_items);
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
