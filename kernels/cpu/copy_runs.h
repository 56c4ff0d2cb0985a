// Copies of the short runs that im2col gathers (a kernel row of a few channels): fixed-size
// chunks compile to vector moves where a call of memcpy would cost more than the copy, and the
// last chunk overlaps the one before it instead of a byte-by-byte tail.
#pragma once

#include <cstddef>
#include <cstring>

namespace nimbus::kernels {

// Copies bytes >= Chunk in chunks of Chunk bytes, the last one overlapping.
template <std::size_t Chunk>
inline void copy_chunks(unsigned char* target, const unsigned char* source, std::size_t bytes) {
    for (; bytes > Chunk; bytes -= Chunk, target += Chunk, source += Chunk) {
        std::memcpy(target, source, Chunk);
    }
    std::memcpy(target + bytes - Chunk, source + bytes - Chunk, Chunk);
}

// Copies `bytes` bytes between buffers that do not overlap.
inline void copy_run(void* target, const void* source, std::size_t bytes) {
    auto* to = static_cast<unsigned char*>(target);
    const auto* from = static_cast<const unsigned char*>(source);
    if (bytes >= 64) {
        copy_chunks<64>(to, from, bytes);
    } else if (bytes >= 16) {
        copy_chunks<16>(to, from, bytes);
    } else if (bytes >= 8) {
        copy_chunks<8>(to, from, bytes);
    } else if (bytes >= 4) {
        copy_chunks<4>(to, from, bytes);
    } else {
        for (std::size_t i = 0; i < bytes; ++i) {
            to[i] = from[i];
        }
    }
}

}  // namespace nimbus::kernels
