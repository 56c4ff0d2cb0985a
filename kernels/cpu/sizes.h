// Integer size arithmetic shared by the kernel drivers.
#pragma once

#include <cstddef>

namespace nimbus::kernels {

// value / divisor, rounded up.
constexpr std::size_t ceil_div(std::size_t value, std::size_t divisor) {
    return (value + divisor - 1) / divisor;
}

// value rounded up to a multiple of `multiple`.
constexpr std::size_t round_up(std::size_t value, std::size_t multiple) {
    return ceil_div(value, multiple) * multiple;
}

}  // namespace nimbus::kernels
