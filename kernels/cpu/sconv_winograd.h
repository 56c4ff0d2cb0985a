// Float 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) (sconv_winograd.cpp): the AVX-512
// path's form of sconv2d for layers with enough channels on both sides.
#pragma once

#include <cstddef>

#include "sconv.h"

namespace nimbus::kernels {

// Layers with fewer channels stay on the GEMM over windows, whose depth is 9 times theirs.
inline constexpr std::size_t kWinogradMinChannels = 32;
// Beyond 128 x 128, the 16 transformed weight matrices (16 x C x O floats) no longer stay in
// L2 while a block of tiles passes, and the GEMMs wait on them.
inline constexpr std::size_t kWinogradMaxProducts = 512 * 512;

// Whether pack_sconv_weights packs these weights for the Winograd path too.
bool winograd_packable(std::size_t out_channels, std::size_t group_channels,
                       std::size_t kernel_h, std::size_t kernel_w, std::size_t groups, Isa isa);

#ifdef NIMBUS_X86_KERNELS
// Fills packed.winograd_weights from OIHW w (3x3, one group).
void pack_winograd(const float* w, PackedSconvWeights& packed);

// sconv2d for stride 1 and dilation 1 with packed.winograd_weights filled.
void sconv2d_winograd(const float* x, const ConvGeometry& geometry,
                      const PackedSconvWeights& weights, const SgemmEpilogue& epilogue,
                      float* out, std::size_t threads);
#endif

}  // namespace nimbus::kernels
