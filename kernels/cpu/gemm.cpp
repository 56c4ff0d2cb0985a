#include "gemm.h"

#include <algorithm>
#include <cstdint>

namespace nimbus::kernels {
namespace {

// A kBlockK x kBlockN panel of b (64 KiB) stays in L2 while every row of a streams past it, and
// the kBlockN accumulators of one row of c (2 KiB) stay in L1 across the kBlockK updates.
constexpr std::size_t kBlockK = 128;
constexpr std::size_t kBlockN = 512;

// One row of c over one panel of b: c_row[n_begin:n_end] += a_row[k_begin:k_end] @ panel.
// __restrict tells the compiler that c does not overlap the int8 inputs (char-sized types may
// alias anything), so the column loop vectorizes without run-time overlap checks.
template <typename AElement>
void accumulate_row(const AElement* __restrict a_row, const std::int8_t* __restrict b,
                    std::int32_t* __restrict c_row, std::size_t n, std::size_t k_begin,
                    std::size_t k_end, std::size_t n_begin, std::size_t n_end) {
    for (std::size_t depth = k_begin; depth < k_end; ++depth) {
        const std::int16_t a_value = a_row[depth];
        const std::int8_t* b_row = b + depth * n;
        for (std::size_t col = n_begin; col < n_end; ++col) {
            // Every u8 x s8 and s8 x s8 product fits in int16, which lets the compiler use
            // 16-bit vector multiplies before widening to the int32 sum.
            const auto product = static_cast<std::int16_t>(a_value * b_row[col]);
            c_row[col] += product;
        }
    }
}

template <typename AElement>
void gemm_blocked(const AElement* a, const std::int8_t* b, std::int32_t* c, std::size_t m,
                  std::size_t n, std::size_t k) {
    std::fill(c, c + m * n, 0);
    for (std::size_t k_begin = 0; k_begin < k; k_begin += kBlockK) {
        const std::size_t k_end = std::min(k, k_begin + kBlockK);
        for (std::size_t n_begin = 0; n_begin < n; n_begin += kBlockN) {
            const std::size_t n_end = std::min(n, n_begin + kBlockN);
            for (std::size_t row = 0; row < m; ++row) {
                accumulate_row(a + row * k, b, c + row * n, n, k_begin, k_end, n_begin, n_end);
            }
        }
    }
}

}  // namespace

void gemm_u8s8s32(const std::uint8_t* a, const std::int8_t* b, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k) {
    gemm_blocked(a, b, c, m, n, k);
}

void gemm_s8s8s32(const std::int8_t* a, const std::int8_t* b, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k) {
    gemm_blocked(a, b, c, m, n, k);
}

}  // namespace nimbus::kernels
