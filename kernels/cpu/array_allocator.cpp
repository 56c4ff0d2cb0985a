// numpy arrays that start on a cache line, for the activations of a run (those of 1 KiB or
// more: smaller ones keep malloc's alignment).
//
// numpy takes array memory from malloc, which aligns it to 16 bytes only. The vector kernels
// load and store whole 64-byte vectors of channels, so at 16 bytes off a line every such access
// spans two lines: the float depthwise convolutions of MobileNetV2 ran 20-25% slower on such
// arrays than on aligned ones. numpy lets a program choose the allocator of the arrays it makes
// (NEP 49), per context: a Session makes its run's arrays with this one and restores the
// previous allocator when the run returns, so arrays made elsewhere in the process are left
// alone. Each array records the allocator that made it, which frees it later.
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <pybind11/pybind11.h>
#include <numpy/arrayobject.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cache_line.h"

namespace py = pybind11;

namespace {

using nimbus::kernels::kCacheLineBytes;

// Arrays below this size come from malloc as they are (a run's small arrays are the
// executor's per-step cost, which aligned_alloc raised by 0.1 us a step); larger ones start on
// a cache line.
constexpr std::size_t kSmallBytes = 1024;

// The 16 bytes before an array's data: the size asked for (realloc copies that much) and
// where the block starts.
struct Header {
    std::size_t size;
    std::size_t offset;  // from the block's start to the data
};
constexpr std::size_t kHeaderBytes = 16;
static_assert(sizeof(Header) == kHeaderBytes);

Header header_of(const void* data) {
    Header header;
    std::memcpy(&header, static_cast<const char*>(data) - kHeaderBytes, sizeof(header));
    return header;
}

void* aligned_malloc(void* /*context*/, std::size_t size) {
    // A small array's header fills malloc's 16-byte alignment; a large one's ends a cache line.
    const std::size_t offset = size < kSmallBytes ? kHeaderBytes : kCacheLineBytes;
    const std::size_t total = size + offset;
    // aligned_alloc takes whole multiples of the alignment.
    const std::size_t rounded = (total + kCacheLineBytes - 1) / kCacheLineBytes * kCacheLineBytes;
    if (total < size || rounded < total) {
        return nullptr;
    }
    auto* block = static_cast<char*>(size < kSmallBytes
                                         ? std::malloc(total)
                                         : std::aligned_alloc(kCacheLineBytes, rounded));
    if (block == nullptr) {
        return nullptr;
    }
    const Header header{size, offset};
    std::memcpy(block + offset - kHeaderBytes, &header, sizeof(header));
    return block + offset;
}

void* aligned_calloc(void* context, std::size_t count, std::size_t element_size) {
    if (element_size != 0 && count > SIZE_MAX / element_size) {
        return nullptr;
    }
    void* data = aligned_malloc(context, count * element_size);
    if (data != nullptr) {
        std::memset(data, 0, count * element_size);
    }
    return data;
}

void aligned_free(void* /*context*/, void* data, std::size_t /*size*/) {
    if (data != nullptr) {
        std::free(static_cast<char*>(data) - header_of(data).offset);
    }
}

void* aligned_realloc(void* context, void* data, std::size_t size) {
    if (data == nullptr) {
        return aligned_malloc(context, size);
    }
    void* moved = aligned_malloc(context, size);
    if (moved == nullptr) {
        return nullptr;  // the old block stays valid, as realloc leaves it
    }
    const std::size_t old_size = header_of(data).size;
    std::memcpy(moved, data, std::min(old_size, size));
    aligned_free(context, data, old_size);
    return moved;
}

PyDataMem_Handler cache_line_handler = {
    "nimbus_cache_line_allocator",
    1,
    {nullptr, aligned_malloc, aligned_calloc, aligned_realloc, aligned_free},
};

}  // namespace

namespace nimbus::bindings {

void register_array_allocator(py::module_& module) {
    if (PyArray_ImportNumPyAPI() < 0) {
        throw py::error_already_set();
    }
    module.attr("CACHE_LINE_ALLOCATOR") =
        py::reinterpret_steal<py::object>(PyCapsule_New(&cache_line_handler, "mem_handler", nullptr));
    module.def(
        "set_array_allocator",
        [](py::object handler) {
            PyObject* previous = PyDataMem_SetHandler(handler.is_none() ? nullptr : handler.ptr());
            if (previous == nullptr) {
                throw py::error_already_set();
            }
            return py::reinterpret_steal<py::object>(previous);
        },
        py::arg("handler"),
        "Make numpy allocate this context's new arrays with `handler` (a 'mem_handler' capsule,\n"
        "such as CACHE_LINE_ALLOCATOR; None for numpy's default); returns the previous one.");
}

}  // namespace nimbus::bindings
