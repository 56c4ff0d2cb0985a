// Run-time choice of the instruction-set path of the int8 GEMM.
#pragma once

#include <string>
#include <vector>

// The x86 paths need GCC or Clang function target attributes; other hosts get the portable path.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define NIMBUS_X86_KERNELS 1
#endif

namespace nimbus::kernels {

enum class Isa { portable, avx2, avx512_vnni };

const char* isa_name(Isa isa);

// The paths that this CPU and operating system run, fastest first; "portable" is always last.
std::vector<Isa> available_isas();

// The path named `name`. Throws std::invalid_argument for an unknown name and
// std::runtime_error for a path that this machine cannot run.
Isa supported_isa(const std::string& name);

// The process-wide path: NIMBUS_ISA when set (an error if unknown or unsupported), else the
// fastest available. Chosen once, on first use.
Isa selected_isa();

}  // namespace nimbus::kernels
