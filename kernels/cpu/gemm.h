// Portable int8 matrix multiplication with int32 accumulation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

namespace nimbus::kernels {

// The largest depth K at which no sum of K products can leave int32: a u8 x s8 product lies in
// [255 * -128, 255 * 127] and an s8 x s8 product in [-128 * 127, -128 * -128].
inline constexpr std::size_t kMaxDepthU8S8 = std::numeric_limits<std::int32_t>::max() / (255 * 128);
inline constexpr std::size_t kMaxDepthS8S8 = std::numeric_limits<std::int32_t>::max() / (128 * 128);

// c[M, N] = a[M, K] @ b[K, N]. All three are row-major and contiguous; c is overwritten.
// Callers keep K within the matching kMaxDepth bound.
void gemm_u8s8s32(const std::uint8_t* a, const std::int8_t* b, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k);
void gemm_s8s8s32(const std::int8_t* a, const std::int8_t* b, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k);

}  // namespace nimbus::kernels
