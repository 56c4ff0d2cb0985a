// The portable path of the attention / normalization row primitives: plain C++ whose inner
// loops run along contiguous columns (or 16 partial sums), which the compiler vectorizes for
// the baseline ISA without reordering any sum.
#include <cmath>
#include <cstring>

#include "attention_paths.h"

namespace nimbus::kernels {
namespace {

// Partial sums per reduction: more accurate than one running sum, and vectorizable.
constexpr std::size_t kLanes = 16;

void gemm(const float* a, std::size_t a_stride, const float* b, std::size_t b_stride, float* c,
          std::size_t c_stride, std::size_t m, std::size_t n, std::size_t k) {
    for (std::size_t i = 0; i < m; ++i) {
        float* target = c + i * c_stride;
        for (std::size_t j = 0; j < n; ++j) {
            target[j] = 0.0f;
        }
        for (std::size_t p = 0; p < k; ++p) {
            const float scalar = a[i * a_stride + p];
            const float* source = b + p * b_stride;
            for (std::size_t j = 0; j < n; ++j) {
                target[j] += scalar * source[j];
            }
        }
    }
}

float row_max(const float* x, std::size_t n) {
    float peak = x[0];
    for (std::size_t j = 1; j < n; ++j) {
        // Once peak is NaN no comparison replaces it.
        peak = x[j] > peak || x[j] != x[j] ? x[j] : peak;
    }
    return peak;
}

float scale_add_max(float* x, std::size_t n, float factor, const float* add) {
    if (add == nullptr) {
        for (std::size_t j = 0; j < n; ++j) {
            x[j] *= factor;
        }
    } else {
        for (std::size_t j = 0; j < n; ++j) {
            x[j] = x[j] * factor + add[j];
        }
    }
    return row_max(x, n);
}

// The sum of x[0, n) over kLanes partial sums, added pairwise at the end.
template <typename Term>
float lane_sum(std::size_t n, Term term) {
    float partial[kLanes] = {};
    std::size_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        for (std::size_t lane = 0; lane < kLanes; ++lane) {
            partial[lane] += term(j + lane);
        }
    }
    for (std::size_t lane = 0; j < n; ++j, ++lane) {
        partial[lane] += term(j);
    }
    for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
        for (std::size_t lane = 0; lane < width; ++lane) {
            partial[lane] += partial[lane + width];
        }
    }
    return partial[0];
}

float exp_sum(const float* x, float* out, std::size_t n, float shift) {
    for (std::size_t j = 0; j < n; ++j) {
        out[j] = std::exp(x[j] - shift);
    }
    return lane_sum(n, [&](std::size_t j) { return out[j]; });
}

void scale(float* x, std::size_t n, float factor) {
    for (std::size_t j = 0; j < n; ++j) {
        x[j] *= factor;
    }
}

void layer_norm_row(const float* x, std::size_t n, const float* weight, const float* bias,
                    float eps, float* out) {
    const float count = static_cast<float>(n);
    const float mean = lane_sum(n, [&](std::size_t j) { return x[j]; }) / count;
    const float var = lane_sum(n, [&](std::size_t j) {
                          const float centered = x[j] - mean;
                          return centered * centered;
                      }) / count;
    const float inverse_std = 1.0f / std::sqrt(var + eps);
    for (std::size_t j = 0; j < n; ++j) {
        float value = (x[j] - mean) * inverse_std;
        if (weight != nullptr) {
            value *= weight[j];
        }
        if (bias != nullptr) {
            value += bias[j];
        }
        out[j] = value;
    }
}

}  // namespace

void pack_transposed_elements(const void* k, std::size_t row_stride, std::size_t d,
                              std::size_t first_row, std::size_t end_row,
                              std::size_t first_column, void* strips) {
    constexpr std::size_t kWord = 4;
    for (std::size_t j = first_row; j < end_row; ++j) {
        const auto* row = static_cast<const unsigned char*>(k) + j * row_stride * kWord;
        auto* column = static_cast<unsigned char*>(strips) +
                       (j / kAttentionStrip * d * kAttentionStrip + j % kAttentionStrip) * kWord;
        for (std::size_t c = first_column; c < d; ++c) {
            std::memcpy(column + c * kAttentionStrip * kWord, row + c * kWord, kWord);
        }
    }
}

void pack_transposed_elementwise(const float* k, std::size_t row_stride, std::size_t s,
                                 std::size_t d, float* strips) {
    pack_transposed_elements(k, row_stride, d, 0, s, 0, strips);
}

const RowKernels kRowKernelsPortable{gemm,    pack_transposed_elementwise, row_max, scale_add_max,
                                     exp_sum, scale,                       layer_norm_row};

}  // namespace nimbus::kernels
