// The portable path of the int8 GEMM: plain C++ that the compiler vectorizes for the baseline
// ISA of the build. It is the reference that the SIMD paths are compared with on any host.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "qgemm_paths.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kPanelWidth = kPortableLayout.panel_width;

// Writes one finished value of row `row`, column `col`.
void store_value(const GemmTask& task, std::size_t row, std::size_t col, std::int32_t raw) {
    const auto wrapped = static_cast<std::uint32_t>(raw) +
                         static_cast<std::uint32_t>(task.column_offset[col]);
    store_epilogue(task.type, task.out, row * task.n + col, static_cast<std::int32_t>(wrapped),
                   task.scale != nullptr ? task.scale[col] : 0.0f, task.zero_point, task.lo,
                   task.hi, task.residual);
}


}  // namespace

float residual_term(const Residual& residual, std::size_t index) {
    const std::int32_t value =
        residual.is_signed ? static_cast<const std::int8_t*>(residual.data)[index]
                           : static_cast<const std::uint8_t*>(residual.data)[index];
    return static_cast<float>(value - residual.zero_point) * residual.scale;
}

void store_epilogue(OutputType type, void* out, std::size_t index, std::int32_t acc, float scale,
                    std::int32_t zero_point, std::int32_t lo, std::int32_t hi,
                    const Residual& residual) {
    if (type == OutputType::s32) {
        static_cast<std::int32_t*>(out)[index] = acc;
        return;
    }
    float scaled = static_cast<float>(acc) * scale;
    if (residual.data != nullptr) {
        scaled = scaled + residual_term(residual, index);
    }
    if (type == OutputType::f32) {
        static_cast<float*>(out)[index] = scaled;
        return;
    }
    // Clamping before rounding equals clamping after it (the bounds are integers), and keeps
    // the value inside int32 for the conversion.
    const auto low = static_cast<float>(lo - zero_point);
    const auto high = static_cast<float>(hi - zero_point);
    const float rounded = std::nearbyint(std::min(std::max(scaled, low), high));
    const std::int32_t q = static_cast<std::int32_t>(rounded) + zero_point;
    if (type == OutputType::u8) {
        static_cast<std::uint8_t*>(out)[index] = static_cast<std::uint8_t>(q);
    } else {
        static_cast<std::int8_t*>(out)[index] = static_cast<std::int8_t>(q);
    }
}

void run_portable(const GemmTask& task, std::size_t row_begin, std::size_t row_end,
                  std::size_t panel_begin, std::size_t panel_end) {
    const auto* a = static_cast<const std::uint8_t*>(task.a);
    for (std::size_t panel = panel_begin; panel < panel_end; ++panel) {
        const std::int8_t* b = task.b + panel * task.padded_k * kPanelWidth;
        const std::size_t col_begin = panel * kPanelWidth;
        const std::size_t width = std::min(kPanelWidth, task.n - col_begin);
        for (std::size_t row = row_begin; row < row_end; ++row) {
            const std::uint8_t* a_row = a + row * task.padded_k;
            std::int32_t acc[kPanelWidth] = {};
            for (std::size_t depth = 0; depth < task.padded_k; ++depth) {
                const std::int32_t a_value = a_row[depth];
                const std::int8_t* b_row = b + depth * kPanelWidth;
                for (std::size_t lane = 0; lane < kPanelWidth; ++lane) {
                    acc[lane] += a_value * b_row[lane];
                }
            }
            for (std::size_t lane = 0; lane < width; ++lane) {
                store_value(task, row, col_begin + lane, acc[lane]);
            }
        }
    }
}

std::uint64_t peak_portable(std::size_t iterations, std::uint32_t& sink) {
    // No single instruction: the kernel itself on a GEMM whose operands stay in L1 and L2 (16
    // rows, one panel, depth 1024), one call per iteration.
    constexpr std::size_t kRows = 16;
    constexpr std::size_t kDepth = 1024;
    std::vector<std::uint8_t> a(kRows * kDepth, static_cast<std::uint8_t>(sink | 1));
    std::vector<std::int8_t> b(kDepth * kPanelWidth, 3);
    std::vector<std::int32_t> offsets(kPanelWidth, 0);
    std::vector<std::int32_t> out(kRows * kPanelWidth, 0);
    GemmTask task{a.data(), nullptr, b.data(), kDepth, kPanelWidth, offsets.data(), nullptr,
                  OutputType::s32, 0, 0, 0, {}, out.data()};
    // Called as any GEMM calls it, not inlined here with the task's fields known.
    void (*volatile kernel)(const GemmTask&, std::size_t, std::size_t, std::size_t,
                            std::size_t) = run_portable;
    for (std::size_t i = 0; i < iterations; ++i) {
        kernel(task, 0, kRows, 0, 1);
    }
    sink += static_cast<std::uint32_t>(out[0]);
    return 2ull * kRows * kPanelWidth * kDepth * iterations;
}

}  // namespace nimbus::kernels
