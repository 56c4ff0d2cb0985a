#include "isa.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#include "qgemm_paths.h"
#include "sizes.h"

#ifdef NIMBUS_X86_KERNELS
#include <cpuid.h>
#endif
#if defined(NIMBUS_X86_KERNELS) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace nimbus::kernels {
namespace {

constexpr Isa kAllIsas[] = {Isa::amx, Isa::avx512_vnni, Isa::avx2, Isa::portable,
                             Isa::amx_emulated};

std::string known_names() {
    std::string names;
    for (const Isa isa : kAllIsas) {
        names += names.empty() ? "" : ", ";
        names += isa_name(isa);
    }
    return names;
}

std::string available_names() {
    std::string names;
    for (const Isa isa : available_isas()) {
        names += names.empty() ? "" : ", ";
        names += isa_name(isa);
    }
    return names;
}

#ifdef NIMBUS_X86_KERNELS
// XCR0 bits: the register state that the operating system saves on context switches.
constexpr std::uint64_t kXmmYmmState = 0x6;
constexpr std::uint64_t kZmmState = 0xE0;  // opmask, upper halves of zmm0-15, zmm16-31
constexpr std::uint64_t kTileState = 0x60000;  // XTILECFG and XTILEDATA

// Linux keeps the 8 KiB of tile data out of a process's saved state until it asks for it
// (arch/x86/include/uapi/asm/prctl.h); without that, the first AMX instruction faults. Other
// systems get no AMX path.
bool tile_data_permitted() {
#ifdef __linux__
    constexpr int kArchRequestStatePermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr int kTileDataFeature = 18;                 // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kArchRequestStatePermission, kTileDataFeature) == 0;
#else
    return false;
#endif
}

struct CpuFeatures {
    bool avx2 = false;
    bool avx512_vnni = false;
    bool amx = false;
};

std::uint64_t enabled_register_state() {
    std::uint32_t low = 0;
    std::uint32_t high = 0;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return (static_cast<std::uint64_t>(high) << 32) | low;
}

CpuFeatures detect_features() {
    CpuFeatures features;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
        return features;
    }
    const bool osxsave = (ecx >> 27) & 1;
    if (!osxsave || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
        return features;
    }
    const std::uint64_t state = enabled_register_state();
    const bool ymm_saved = (state & kXmmYmmState) == kXmmYmmState;
    const bool zmm_saved = ymm_saved && (state & kZmmState) == kZmmState;
    const bool avx2 = (ebx >> 5) & 1;
    const bool avx512f = (ebx >> 16) & 1;
    const bool avx512bw = (ebx >> 30) & 1;
    const bool avx512_vnni = (ecx >> 11) & 1;
    const bool amx_tile = (edx >> 24) & 1;
    const bool amx_int8 = (edx >> 25) & 1;
    features.avx2 = ymm_saved && avx2;
    features.avx512_vnni = zmm_saved && avx512f && avx512bw && avx512_vnni;
    features.amx = features.avx512_vnni && amx_tile && amx_int8 &&
                   (state & kTileState) == kTileState && tile_data_permitted();
    return features;
}
#endif

std::vector<Isa> detect_isas() {
    std::vector<Isa> isas;
#ifdef NIMBUS_X86_KERNELS
    const CpuFeatures features = detect_features();
    if (features.amx) {
        isas.push_back(Isa::amx);
    }
    if (features.avx512_vnni) {
        isas.push_back(Isa::avx512_vnni);
    }
    if (features.avx2) {
        isas.push_back(Isa::avx2);
    }
#endif
    isas.push_back(Isa::portable);
    return isas;
}

// The process-wide path and whether NIMBUS_ISA named it.
struct ProcessIsa {
    Isa isa;
    bool named;
};

ProcessIsa choose_process_isa() {
    const char* forced = std::getenv("NIMBUS_ISA");
    if (forced == nullptr || *forced == '\0') {
        return {available_isas().front(), false};
    }
    try {
        return {supported_isa(forced), true};
    } catch (const std::invalid_argument& error) {
        throw std::invalid_argument(std::string("NIMBUS_ISA: ") + error.what());
    } catch (const std::runtime_error& error) {
        throw std::runtime_error(std::string("NIMBUS_ISA: ") + error.what());
    }
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::amx:
            return "amx";
        case Isa::amx_emulated:
            return "amx_emulated";
        case Isa::avx512_vnni:
            return "avx512_vnni";
        case Isa::avx2:
            return "avx2";
        case Isa::portable:
            return "portable";
    }
    return "unknown";
}

std::vector<Isa> available_isas() {
    static const std::vector<Isa> isas = detect_isas();
    return isas;
}

Isa supported_isa(const std::string& name) {
    const auto* known = std::find_if(std::begin(kAllIsas), std::end(kAllIsas),
                                     [&](Isa isa) { return name == isa_name(isa); });
    if (known == std::end(kAllIsas)) {
        throw std::invalid_argument("unknown ISA path '" + name + "'; the paths are " +
                                    known_names());
    }
    const std::vector<Isa> available = available_isas();
    const Isa needed = *known == Isa::amx_emulated ? Isa::avx512_vnni : *known;
    if (std::find(available.begin(), available.end(), needed) == available.end()) {
        throw std::runtime_error("ISA path '" + name +
                                 "' is not supported by this CPU and operating system; "
                                 "available: " + available_names());
    }
    return *known;
}

Isa vector_isa(Isa isa) {
    return isa == Isa::amx || isa == Isa::amx_emulated ? Isa::avx512_vnni : isa;
}

namespace {

const ProcessIsa& process_isa() {
    // A throwing initializer leaves the static uninitialized, so a bad NIMBUS_ISA raises on
    // every call instead of once.
    static const ProcessIsa chosen = choose_process_isa();
    return chosen;
}

}  // namespace

Isa selected_isa() { return process_isa().isa; }

Isa gemm_isa(std::size_t depth, std::size_t outputs) {
    const ProcessIsa& chosen = process_isa();
    if (chosen.isa != Isa::amx || chosen.named) {
        return chosen.isa;
    }
    const std::size_t padded = round_up(depth, kAmxLayout.depth_multiple);
    const bool fits = depth >= kAmxLayout.depth_multiple && outputs >= kAmxLayout.panel_width &&
                      4 * (padded - depth) <= padded;
    return fits ? Isa::amx : Isa::avx512_vnni;
}

}  // namespace nimbus::kernels
