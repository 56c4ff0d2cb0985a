// The elementwise stack machine: the output in segments of at most kChunk elements along its
// innermost (coalesced) dimension, or of several whole rows where rows are short; per segment,
// each step runs over whole chunk registers.
// The loops are plain C++ that the compiler vectorizes; the x86 build compiles them once more
// for AVX2 (vector_math_avx2.h's target), which every AVX-512 path also has.
#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kChunk = 512;  // floats per register (a program uses a few)
// The fewest elements per parallel piece: a pooled thread's hand-off costs about as much.
constexpr std::size_t kMinPiece = 16384;

constexpr bool is_binary(ElementwiseOp op) {
    return op >= ElementwiseOp::add && op <= ElementwiseOp::minimum;
}

// The output's dimensions after dropping those of extent 1 and merging neighbours that every
// operand, and the output, steps through as one (stride[i] == stride[i + 1] * extent[i + 1]).
struct Iteration {
    std::vector<std::size_t> shape;
    // per operand, then the output, per dimension
    std::vector<std::vector<std::ptrdiff_t>> strides;
};

Iteration coalesced(const std::vector<std::size_t>& shape,
                    const std::vector<const std::vector<std::ptrdiff_t>*>& strides) {
    Iteration it;
    it.strides.resize(strides.size());
    for (std::size_t d = 0; d < shape.size(); ++d) {
        if (shape[d] == 1) {
            continue;
        }
        bool merges = !it.shape.empty();
        for (std::size_t o = 0; o < strides.size() && merges; ++o) {
            merges = it.strides[o].back() ==
                     (*strides[o])[d] * static_cast<std::ptrdiff_t>(shape[d]);
        }
        if (merges) {
            it.shape.back() *= shape[d];
            for (std::size_t o = 0; o < strides.size(); ++o) {
                it.strides[o].back() = (*strides[o])[d];
            }
            continue;
        }
        it.shape.push_back(shape[d]);
        for (std::size_t o = 0; o < strides.size(); ++o) {
            it.strides[o].push_back((*strides[o])[d]);
        }
    }
    if (it.shape.empty()) {  // one element
        it.shape.push_back(1);
        for (auto& operand_strides : it.strides) {
            operand_strides.push_back(0);
        }
    }
    return it;
}

template <typename Element>
inline void load_as_float(const void* data, std::ptrdiff_t offset, std::ptrdiff_t stride,
                          std::size_t n, float* __restrict to) {
    const Element* from = static_cast<const Element*>(data) + offset;
    if (stride == 1) {
        for (std::size_t i = 0; i < n; ++i) {
            to[i] = static_cast<float>(from[i]);
        }
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            to[i] = static_cast<float>(from[static_cast<std::ptrdiff_t>(i) * stride]);
        }
    }
}

inline void load(const ElementwiseOperand& operand, std::ptrdiff_t offset, std::ptrdiff_t stride,
                 std::size_t n, float* to) {
    switch (operand.type) {
        case ElementType::f32:
            return load_as_float<float>(operand.data, offset, stride, n, to);
        case ElementType::f64:
            return load_as_float<double>(operand.data, offset, stride, n, to);
        case ElementType::i64:
            return load_as_float<std::int64_t>(operand.data, offset, stride, n, to);
        case ElementType::i32:
            return load_as_float<std::int32_t>(operand.data, offset, stride, n, to);
        case ElementType::i16:
            return load_as_float<std::int16_t>(operand.data, offset, stride, n, to);
        case ElementType::i8:
            return load_as_float<std::int8_t>(operand.data, offset, stride, n, to);
        case ElementType::u8:
        case ElementType::boolean:  // numpy's bool is one byte, 0 or 1
            return load_as_float<std::uint8_t>(operand.data, offset, stride, n, to);
    }
}

// dest[i] = op(x[i], y[i]) for a binary op; dest may be x.
template <typename Op>
inline void binary(float* dest, const float* x, const float* __restrict y, std::size_t n, Op op) {
    for (std::size_t i = 0; i < n; ++i) {
        dest[i] = op(x[i], y[i]);
    }
}

template <typename Op>
inline void unary(float* dest, const float* x, std::size_t n, Op op) {
    for (std::size_t i = 0; i < n; ++i) {
        dest[i] = op(x[i]);
    }
}

// One segment of the output: `rows` consecutive rows of `length` elements each along the
// innermost dimension (rows > 1 only for whole rows), at operand offsets `offsets`; operand o
// steps by inner_strides[o] within a row and by row_strides[o] from one row to the next.
struct Segment {
    const std::ptrdiff_t* offsets;
    const std::ptrdiff_t* inner_strides;
    const std::ptrdiff_t* row_strides;
    std::size_t length;
    std::size_t rows;
};

// The segment's values of one operand: a pointer into it where they are contiguous float32,
// else converted, gathered or broadcast row by row into `registers`.
inline const float* segment_input(const ElementwiseOperand& operand, std::size_t index,
                                  const Segment& segment, float* __restrict registers) {
    const std::ptrdiff_t stride = segment.inner_strides[index];
    const auto length = static_cast<std::ptrdiff_t>(segment.length);
    const bool contiguous =
        stride == 1 && (segment.rows == 1 || segment.row_strides[index] == length);
    if (operand.type == ElementType::f32 && contiguous) {
        return static_cast<const float*>(operand.data) + segment.offsets[index];
    }
    for (std::size_t r = 0; r < segment.rows; ++r) {
        const std::ptrdiff_t offset =
            segment.offsets[index] + static_cast<std::ptrdiff_t>(r) * segment.row_strides[index];
        float* row = registers + r * segment.length;
        if (stride == 0) {
            float value;
            load(operand, offset, 0, 1, &value);
            std::fill(row, row + segment.length, value);
        } else {
            load(operand, offset, stride, segment.length, row);
        }
    }
    return registers;
}

// Runs the program over one segment (its rows * length output elements, contiguous in `out`).
// Stack slot j owns register j, but its value may point straight into a contiguous float32
// operand instead (no copy); each op writes into its slot's register, the last one into `out`.
__attribute__((always_inline)) inline void run_segment(
    const std::vector<ElementwiseStep>& steps, const std::vector<ElementwiseOperand>& operands,
    const Segment& segment, float* out, Isa isa) {
    alignas(64) float registers[kElementwiseMaxDepth][kChunk];
    const float* values[kElementwiseMaxDepth];
    const std::size_t n = segment.rows * segment.length;
    std::size_t top = 0;  // values on the stack
    for (std::size_t s = 0; s < steps.size(); ++s) {
        const ElementwiseStep& step = steps[s];
        if (step.op == ElementwiseOp::input) {
            values[top] = segment_input(operands[step.index], step.index, segment, registers[top]);
            ++top;
            continue;
        }
        if (step.op == ElementwiseOp::constant) {
            std::fill(registers[top], registers[top] + n, step.a);
            values[top] = registers[top];
            ++top;
            continue;
        }
        top -= is_binary(step.op) ? 1 : 0;
        const float* x = values[top - 1];
        const float* y = values[top];  // binary ops only
        float* dest = s + 1 == steps.size() ? out : registers[top - 1];
        switch (step.op) {
            case ElementwiseOp::add:
                binary(dest, x, y, n, [](float a, float b) { return a + b; });
                break;
            case ElementwiseOp::sub:
                binary(dest, x, y, n, [](float a, float b) { return a - b; });
                break;
            case ElementwiseOp::mul:
                binary(dest, x, y, n, [](float a, float b) { return a * b; });
                break;
            case ElementwiseOp::div:
                binary(dest, x, y, n, [](float a, float b) { return a / b; });
                break;
            case ElementwiseOp::maximum:
                binary(dest, x, y, n, [](float a, float b) { return a > b || a != a ? a : b; });
                break;
            case ElementwiseOp::minimum:
                binary(dest, x, y, n, [](float a, float b) { return a < b || a != a ? a : b; });
                break;
            case ElementwiseOp::neg:
                unary(dest, x, n, [](float a) { return -a; });
                break;
            case ElementwiseOp::abs:
                unary(dest, x, n, [](float a) { return std::fabs(a); });
                break;
            case ElementwiseOp::sqrt:
                unary(dest, x, n, [](float a) { return std::sqrt(a); });
                break;
            case ElementwiseOp::clip: {
                const float lo = step.a;
                const float hi = step.b;
                unary(dest, x, n, [=](float a) { return a < lo ? lo : (a > hi ? hi : a); });
                break;
            }
            case ElementwiseOp::activation:
                if (dest != x) {
                    std::copy(x, x + n, dest);
                }
                activate(dest, n, step.activation, isa);
                break;
            case ElementwiseOp::input:
            case ElementwiseOp::constant:
                break;
        }
        values[top - 1] = dest;
    }
    if (values[0] != out) {  // a program of one input or constant
        std::copy(values[0], values[0] + n, out);
    }
}

// Output elements [begin, end) of the iteration, segment by segment. A segment whose output is
// not contiguous (a channel slice of NHWC memory narrower than a row) is computed into a
// register of its own and then scattered.
__attribute__((always_inline)) inline void run_piece(
    const std::vector<ElementwiseStep>& steps, const std::vector<ElementwiseOperand>& operands,
    const Iteration& it, std::size_t begin, std::size_t end, float* out, Isa isa) {
    const std::size_t dims = it.shape.size();
    const std::size_t inner = it.shape.back();
    const std::size_t count = operands.size() + 1;  // the output's strides come last
    // Rows shorter than half a chunk (a [N, C, 1, 1] gate over NHWC memory: C floats per row)
    // go several to a segment along the next dimension: one segment per row cost more than the
    // arithmetic (a multiply over 112 x 112 x 32 took 3x as long as one without broadcast).
    const std::size_t rows_per_segment = dims > 1 ? std::max<std::size_t>(kChunk / inner, 1) : 1;
    std::vector<std::ptrdiff_t> offsets(count);
    std::vector<std::ptrdiff_t> inner_strides(count);
    std::vector<std::ptrdiff_t> row_strides(count);
    for (std::size_t o = 0; o < count; ++o) {
        inner_strides[o] = it.strides[o].back();
        row_strides[o] = dims > 1 ? it.strides[o][dims - 2] : 0;
    }
    const std::ptrdiff_t out_inner = inner_strides[operands.size()];
    const std::ptrdiff_t out_row = row_strides[operands.size()];
    alignas(64) float scattered[kChunk];
    std::size_t position = begin;
    while (position < end) {
        // The operands' offsets of element `position`, from its index along each dimension.
        std::size_t rest = position / inner;
        const std::size_t column = position % inner;
        std::size_t rows = 1;
        // Whole rows, within one run of the next dimension.
        if (column == 0 && rows_per_segment > 1) {
            const std::size_t row_in_run = rest % it.shape[dims - 2];
            rows = std::min({rows_per_segment, (end - position) / inner,
                             it.shape[dims - 2] - row_in_run});
            rows = std::max<std::size_t>(rows, 1);
        }
        for (std::size_t o = 0; o < count; ++o) {
            offsets[o] = static_cast<std::ptrdiff_t>(column) * inner_strides[o];
        }
        for (std::size_t d = dims - 1; d-- > 0;) {
            const auto index = static_cast<std::ptrdiff_t>(rest % it.shape[d]);
            rest /= it.shape[d];
            for (std::size_t o = 0; o < count; ++o) {
                offsets[o] += index * it.strides[o][d];
            }
        }
        const std::size_t length =
            rows > 1 ? inner : std::min({kChunk, inner - column, end - position});
        const Segment segment{offsets.data(), inner_strides.data(), row_strides.data(), length,
                              rows};
        float* target = out + offsets[operands.size()];
        const bool contiguous =
            out_inner == 1 && (rows == 1 || out_row == static_cast<std::ptrdiff_t>(length));
        run_segment(steps, operands, segment, contiguous ? target : scattered, isa);
        for (std::size_t r = 0; r < rows && !contiguous; ++r) {
            const float* from = scattered + r * length;
            float* row = target + static_cast<std::ptrdiff_t>(r) * out_row;
            if (out_inner == 1) {  // whole rows apart: a channel slice of NHWC memory
                std::copy(from, from + length, row);
                continue;
            }
            for (std::size_t i = 0; i < length; ++i) {
                row[static_cast<std::ptrdiff_t>(i) * out_inner] = from[i];
            }
        }
        position += rows * length;
    }
}

void run_piece_portable(const std::vector<ElementwiseStep>& steps,
                        const std::vector<ElementwiseOperand>& operands, const Iteration& it,
                        std::size_t begin, std::size_t end, float* out, Isa isa) {
    run_piece(steps, operands, it, begin, end, out, isa);
}

#ifdef NIMBUS_X86_KERNELS
__attribute__((target("avx2,fma"))) void run_piece_avx2(
    const std::vector<ElementwiseStep>& steps, const std::vector<ElementwiseOperand>& operands,
    const Iteration& it, std::size_t begin, std::size_t end, float* out, Isa isa) {
    run_piece(steps, operands, it, begin, end, out, isa);
}
#endif

}  // namespace

std::size_t check_elementwise_program(const std::vector<ElementwiseStep>& steps) {
    std::size_t depth = 0;
    std::size_t operands = 0;
    for (std::size_t i = 0; i < steps.size(); ++i) {
        const ElementwiseOp op = steps[i].op;
        const std::size_t pops = is_binary(op) ? 2 : op >= ElementwiseOp::neg ? 1 : 0;
        if (depth < pops) {
            throw std::invalid_argument("elementwise program step " + std::to_string(i) +
                                        " pops " + std::to_string(pops) + " values of " +
                                        std::to_string(depth));
        }
        depth = depth - pops + 1;
        if (depth > kElementwiseMaxDepth) {
            throw std::invalid_argument("elementwise program needs more than " +
                                        std::to_string(kElementwiseMaxDepth) + " registers");
        }
        if (op == ElementwiseOp::input) {
            operands = std::max(operands, steps[i].index + 1);
        }
    }
    if (depth != 1) {
        throw std::invalid_argument("elementwise program must leave one value, leaves " +
                                    std::to_string(depth));
    }
    return operands;
}

void evaluate_elementwise(const std::vector<ElementwiseStep>& steps,
                          const std::vector<ElementwiseOperand>& operands,
                          const std::vector<std::size_t>& shape, float* out,
                          const std::vector<std::ptrdiff_t>& out_strides, std::size_t threads,
                          Isa isa) {
    std::size_t total = 1;
    for (const std::size_t extent : shape) {
        total *= extent;
    }
    if (total == 0) {
        return;
    }
    std::vector<std::ptrdiff_t> contiguous(shape.size());
    std::ptrdiff_t step = 1;
    for (std::size_t d = shape.size(); d-- > 0;) {
        contiguous[d] = step;
        step *= static_cast<std::ptrdiff_t>(shape[d]);
    }
    std::vector<const std::vector<std::ptrdiff_t>*> strides;
    for (const ElementwiseOperand& operand : operands) {
        strides.push_back(&operand.strides);
    }
    strides.push_back(out_strides.empty() ? &contiguous : &out_strides);
    const Iteration it = coalesced(shape, strides);
    auto piece = &run_piece_portable;
#ifdef NIMBUS_X86_KERNELS
    if (sgemm_path(isa) != Isa::portable) {
        piece = &run_piece_avx2;
    }
#endif
    const std::size_t pieces = std::min(std::max<std::size_t>(threads, 1) * 4,
                                        ceil_div(total, kMinPiece));
    if (pieces <= 1) {
        piece(steps, operands, it, 0, total, out, isa);
        return;
    }
    // Pieces of whole chunks, so no segment is cut short except at a row's end.
    const std::size_t length = round_up(ceil_div(total, pieces), kChunk);
    parallel_for(ceil_div(total, length), threads, [&](std::size_t index) {
        piece(steps, operands, it, index * length, std::min(total, (index + 1) * length), out,
              isa);
    });
}

}  // namespace nimbus::kernels
