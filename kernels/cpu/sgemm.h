// Float32 GEMM with weights packed once per ISA path and a fused epilogue:
//     out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n] + residual[m, n])
// for a Linear layer (out = a @ w.T), and for convolutions through sconv.h, whose gathered
// windows (implicit im2col) reach the same driver through SgemmRows.
//
// Every output element is summed in the same order (depth blocks of a fixed size, in order)
// whatever the thread count, so results do not depend on `threads`.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "isa.h"

namespace nimbus::kernels {

// relu and relu6 are clamps on the accumulator registers; the others run as a pass over each
// finished tile while it is still in L1 (vectorized on the AVX-512 path).
enum class Activation { none, relu, relu6, gelu, gelu_tanh, silu, sigmoid, tanh, hardswish };

// Whether the epilogues apply `activation` on their registers (none, or a relu clamp).
constexpr bool clamps_in_registers(Activation activation) {
    return activation == Activation::none || activation == Activation::relu ||
           activation == Activation::relu6;
}

// The activation named `name` ("none", "relu", "gelu", ...); std::invalid_argument otherwise.
Activation activation_from_name(const std::string& name);
const char* activation_name(Activation activation);

// Weights w[n, k] laid out for one ISA path: column panels of `panel_width` outputs follow each
// other; inside a panel, the panel_width weights of one depth are adjacent (K-major), and
// columns past n are zero.
struct PackedSgemmWeights {
    Isa isa = Isa::portable;
    std::size_t n = 0;
    std::size_t k = 0;
    std::size_t panel_width = 0;
    std::size_t padded_n = 0;
    std::vector<float> data;
};

PackedSgemmWeights pack_sgemm_weights(const float* w, std::size_t n, std::size_t k, Isa isa);

struct SgemmEpilogue {
    const float* bias = nullptr;      // [n], or null
    const float* residual = nullptr;  // [M, n] with row stride residual_stride, or null
    std::size_t residual_stride = 0;
    Activation activation = Activation::none;
};

// The rows of the A operand [M, k], handed out block by block: a plain matrix, or the gathered
// windows of a convolution.
class SgemmRows {
public:
    virtual ~SgemmRows() = default;
    // Rows [row, row + count) x depths [k0, k0 + kc) as a row-major block with row stride
    // `stride`: either pointing into the operand itself or written into `scratch`, which holds
    // count rows of kc + 16 floats.
    virtual const float* block(std::size_t row, std::size_t count, std::size_t k0, std::size_t kc,
                               float* scratch, std::size_t& stride) const = 0;
    // Whether block() copies the rows, a cost that every group of panels pays again.
    virtual bool copies() const = 0;
};

// Depths [begin, end) of the GEMM.
struct DepthRange {
    std::size_t begin;
    std::size_t end;
};

// out[M, n] (row stride out_stride) from the rows of `a`, on at most `threads` threads. With
// `depths`, the sums run over those ranges of the depth alone, in order (a convolution's taps
// that read the image, not its padding); without, over the whole depth.
void sgemm_rows(const SgemmRows& a, std::size_t m, const PackedSgemmWeights& weights,
                const SgemmEpilogue& epilogue, float* out, std::size_t out_stride,
                std::size_t threads, const std::vector<DepthRange>& depths = {});

// out[M, n] (contiguous) from a contiguous a[M, k].
void sgemm(const float* a, std::size_t m, const PackedSgemmWeights& weights,
           const SgemmEpilogue& epilogue, float* out, std::size_t threads);

// act(data) in place for `count` floats, vectorized on the AVX-512 path: the activations of the
// epilogue, for layers whose activation the compiler could not fuse into them.
void activate(float* data, std::size_t count, Activation activation, Isa isa);

// The path that float kernels of `isa` run: Isa::avx2 needs FMA as well, which isa.cpp does
// not check, so an AVX2 CPU without FMA runs the portable path.
Isa sgemm_path(Isa isa);

}  // namespace nimbus::kernels
