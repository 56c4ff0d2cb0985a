// The portable path of the float32 GEMM: plain C++ over a tile of 4 rows x 16 columns, the
// columns innermost so that the compiler vectorizes them for the baseline ISA. Also the scalar
// activations that every path without a vectorized form uses.
#include <algorithm>
#include <cmath>

#include "sgemm_paths.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kWidth = kSgemmPortableLayout.panel_width;
constexpr std::size_t kRows = kSgemmPortableLayout.rows;

float activate_value(float x, Activation activation) {
    switch (activation) {
        case Activation::none:
            return x;
        case Activation::relu:
            return std::max(x, 0.0f);
        case Activation::relu6:
            return std::min(std::max(x, 0.0f), 6.0f);
        case Activation::gelu:
            return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
        case Activation::gelu_tanh: {
            const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
            return 0.5f * x * (1.0f + std::tanh(inner));
        }
        case Activation::silu:
            return x / (1.0f + std::exp(-x));
        case Activation::sigmoid:
            return 1.0f / (1.0f + std::exp(-x));
        case Activation::tanh:
            return std::tanh(x);
        case Activation::hardswish:
            return x * (std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f);
    }
    return x;
}

void compute_tile(const SgemmBlock& block, const float* a, const float* b, std::size_t rows,
                  std::size_t row, std::size_t col) {
    const std::size_t columns = std::min(block.n - col, kWidth);
    float acc[kRows][kWidth] = {};
    float* out = block.out + row * block.out_stride + col;
    if (!block.first) {
        for (std::size_t r = 0; r < rows; ++r) {
            std::copy(out + r * block.out_stride, out + r * block.out_stride + columns, acc[r]);
        }
    }
    for (std::size_t depth = 0; depth < block.kc; ++depth) {
        const float* w = b + depth * kWidth;
        for (std::size_t r = 0; r < kRows; ++r) {
            // Rows past `rows` read row 0 again and are never stored.
            const float x = a[(r < rows ? r : 0) * block.a_stride + depth];
            for (std::size_t lane = 0; lane < kWidth; ++lane) {
                acc[r][lane] += x * w[lane];
            }
        }
    }
    for (std::size_t r = 0; r < rows; ++r) {
        float* target = out + r * block.out_stride;
        for (std::size_t lane = 0; lane < columns; ++lane) {
            float value = acc[r][lane];
            if (block.last) {
                value += block.bias != nullptr ? block.bias[col + lane] : 0.0f;
                if (block.residual != nullptr) {
                    value += block.residual[(row + r) * block.residual_stride + col + lane];
                }
                value = activate_value(value, block.activation);
            }
            target[lane] = value;
        }
    }
}

}  // namespace

void activate_portable(float* data, std::size_t count, Activation activation) {
    for (std::size_t i = 0; i < count; ++i) {
        data[i] = activate_value(data[i], activation);
    }
}

void run_sgemm_portable(const SgemmBlock& block) {
    for (std::size_t panel = block.panel_begin; panel < block.panel_end; ++panel) {
        const float* b = block.b + panel * block.k * kWidth + block.k0 * kWidth;
        for (std::size_t row = 0; row < block.rows; row += kRows) {
            const std::size_t rows = std::min(block.rows - row, kRows);
            compute_tile(block, block.a + row * block.a_stride, b, rows, row, panel * kWidth);
        }
    }
}

}  // namespace nimbus::kernels
