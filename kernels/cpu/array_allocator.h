// The allocator of the numpy arrays a Session's runs make (array_allocator.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace nimbus::bindings {

// Adds CACHE_LINE_ALLOCATOR and set_array_allocator to the module.
void register_array_allocator(pybind11::module_& module);

}  // namespace nimbus::bindings
