// numpy arrays that start on a cache line, for the activations of a run.
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

// Each block starts with one cache line that holds the size asked for (realloc copies that
// much); the array's data follows at the next line.
constexpr std::size_t kHeaderBytes = kCacheLineBytes;

void* aligned_malloc(void* /*context*/, std::size_t size) {
    const std::size_t total = size + kHeaderBytes;
    if (total < size) {
        return nullptr;
    }
    // aligned_alloc takes whole multiples of the alignment.
    const std::size_t rounded = (total + kCacheLineBytes - 1) / kCacheLineBytes * kCacheLineBytes;
    if (rounded < total) {
        return nullptr;
    }
    auto* block = static_cast<char*>(std::aligned_alloc(kCacheLineBytes, rounded));
    if (block == nullptr) {
        return nullptr;
    }
    std::memcpy(block, &size, sizeof(size));
    return block + kHeaderBytes;
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
        std::free(static_cast<char*>(data) - kHeaderBytes);
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
    std::size_t old_size = 0;
    std::memcpy(&old_size, static_cast<char*>(data) - kHeaderBytes, sizeof(old_size));
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
