// Fused elementwise regions in one pass: a small stack program (postfix, built by the runtime
// from the `fuse` pass's expression) evaluated over chunks of the broadcast output, so an
// expression of k ops reads its inputs once and keeps its temporaries in L1, where numpy makes
// k passes over memory with a new array each.
//
// Every op rounds as numpy's float32 op of the same name does (IEEE add, sub, mul, div and sqrt;
// maximum / minimum / clip with numpy's NaN and signed-zero choices; the activations of
// sgemm.h's `activate`), so the result does not depend on chunking or on `threads`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "sgemm.h"

namespace nimbus::kernels {

enum class ElementwiseOp : std::uint8_t {
    input,       // push operand `index`, converted to float32
    constant,    // push `a`
    add,         // pop b, pop a, push a op b
    sub,
    mul,
    div,
    maximum,     // numpy: a where a > b or a is NaN, else b
    minimum,     // numpy: a where a < b or a is NaN, else b
    neg,         // replace the top
    abs,
    sqrt,
    clip,        // numpy's clip to [a, b]: NaN stays, ties keep x
    activation,  // sgemm.h's activate with `activation`
};

struct ElementwiseStep {
    ElementwiseOp op = ElementwiseOp::constant;
    std::size_t index = 0;
    float a = 0.0f;
    float b = 0.0f;
    Activation activation = Activation::none;
};

// The deepest stack a program may use: its chunk registers live on the evaluating thread's stack.
inline constexpr std::size_t kElementwiseMaxDepth = 16;

enum class ElementType { f32, f64, i64, i32, i16, i8, u8, boolean };

// An operand seen through the output's dimensions: element (i0, i1, ...) of the output reads
// data[i0 * strides[0] + i1 * strides[1] + ...] (stride 0 along a broadcast dimension).
struct ElementwiseOperand {
    const void* data = nullptr;
    ElementType type = ElementType::f32;
    std::vector<std::ptrdiff_t> strides;  // in elements, one per output dimension
};

// out (float32 of `shape`) = the program over the operands. out_strides (in elements, one per
// dimension) place element (i0, i1, ...) at out[i0 * out_strides[0] + ...], no two elements in
// one place (a channel slice of NHWC memory); empty means C-contiguous. `steps` must be a valid
// program (check_elementwise_program) over `operands`.
void evaluate_elementwise(const std::vector<ElementwiseStep>& steps,
                          const std::vector<ElementwiseOperand>& operands,
                          const std::vector<std::size_t>& shape, float* out,
                          const std::vector<std::ptrdiff_t>& out_strides, std::size_t threads,
                          Isa isa);

// The number of operands a program reads (one more than its largest index); std::invalid_argument
// if it is empty, pops an empty stack, ends with other than one value or passes
// kElementwiseMaxDepth.
std::size_t check_elementwise_program(const std::vector<ElementwiseStep>& steps);

}  // namespace nimbus::kernels
