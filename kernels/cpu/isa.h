// Run-time choice of the instruction-set path of the int8 GEMM.
//
// The AMX path multiplies int8 tiles with AMX and runs everything else (the GEMM's epilogue,
// the float kernels, depthwise convolutions) with AVX512-VNNI, which it requires. Its kernel
// also runs over tiles emulated in software ("amx_emulated"): the same code, checkable on any
// AVX512-VNNI CPU, slow, and never chosen unless named.
#pragma once

#include <string>
#include <vector>

// The x86 paths need GCC or Clang function target attributes; other hosts get the portable path.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define NIMBUS_X86_KERNELS 1
#endif

namespace nimbus::kernels {

enum class Isa { portable, avx2, avx512_vnni, amx, amx_emulated };

const char* isa_name(Isa isa);

// The paths that this CPU and operating system run, fastest first; "portable" is always last.
// "amx_emulated" is not among them.
std::vector<Isa> available_isas();

// The vector path of `isa`: what kernels other than the int8 GEMM run on it (avx512_vnni for
// the AMX paths).
Isa vector_isa(Isa isa);

// The path named `name`. Throws std::invalid_argument for an unknown name and
// std::runtime_error for a path that this machine cannot run ("amx_emulated" runs where
// "avx512_vnni" does).
Isa supported_isa(const std::string& name);

// The process-wide path: NIMBUS_ISA when set (an error if unknown or unsupported), else the
// fastest available. Chosen once, on first use.
Isa selected_isa();

// The path of an int8 GEMM or convolution of `outputs` outputs (a convolution's per group), each
// the sum of `depth` products (a convolution: kernel height x width x channels of a group), for
// weights packed without a named path: selected_isa(), except where detection (not NIMBUS_ISA)
// chose AMX and the depth is under 64 (one tile row), the outputs fewer than 32 (one panel) or
// the depth would be padded by more than a quarter (to a multiple of 64): those run on
// AVX512-VNNI. Such layers leave AMX's multiplies little work per tile load and epilogue, and a
// padded depth costs a copy of the activations: at batch 8, MobileNetV2's pointwise layers
// 16 -> 96, 32 -> 16, 24 -> 144, 32 -> 192 and 144 -> 24 ran 1.3-2.8x faster on VNNI, while
// from a depth of 64 AMX ran them 1.2-2.3x faster (64 -> 384, 96 -> 576, 128 -> 128, 256 -> 256).
Isa gemm_isa(std::size_t depth, std::size_t outputs);

}  // namespace nimbus::kernels
