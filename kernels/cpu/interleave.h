// The permute tables that the direct convolution kernels (sconv_direct_avx512.cpp,
// qconv_direct_avx512.cpp) use to turn one vector of 16 pixels per output channel into NHWC
// pixels. Constant tables only, no code, so nothing here is built for a wider ISA.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nimbus::kernels {

// The 32-bit lanes of one zmm vector.
inline constexpr std::size_t kInterleaveLanes = 16;

// Permutes that turn Outputs vectors of 16 pixels (one per channel) into the Outputs vectors of
// their NHWC 32-bit values: lane e of vector j is pixel (16 j + e) / Outputs of channel
// (16 j + e) % Outputs. Each permute (vpermt2d / vpermt2ps) reads a pair of channel vectors;
// `pair_lanes` picks the lanes of each.
template <std::size_t Outputs>
struct Interleave {
    static constexpr std::size_t kPairs = (Outputs + 1) / 2;
    std::int32_t index[Outputs][kInterleaveLanes];
    std::uint16_t pair_lanes[Outputs][kPairs];
};

template <std::size_t Outputs>
constexpr Interleave<Outputs> make_interleave() {
    Interleave<Outputs> table{};
    for (std::size_t j = 0; j < Outputs; ++j) {
        for (std::size_t e = 0; e < kInterleaveLanes; ++e) {
            const std::size_t pixel = (j * kInterleaveLanes + e) / Outputs;
            const std::size_t channel = (j * kInterleaveLanes + e) % Outputs;
            table.index[j][e] = static_cast<std::int32_t>(channel % 2 * kInterleaveLanes + pixel);
            table.pair_lanes[j][channel / 2] |= static_cast<std::uint16_t>(1u << e);
        }
    }
    return table;
}

template <std::size_t Outputs>
inline constexpr Interleave<Outputs> kInterleave = make_interleave<Outputs>();

}  // namespace nimbus::kernels
