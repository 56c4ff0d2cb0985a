// Python bindings of the CPU kernels: the private extension module nimbus.runtime._kernels.
// Arguments are validated here, before any pointer is read, so bad input raises a Python
// exception that names the argument instead of crashing the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gemm.h"

namespace py = pybind11;

namespace {

using nimbus::kernels::kMaxDepthS8S8;
using nimbus::kernels::kMaxDepthU8S8;

// The Python repr of an array attribute, e.g. "(3, 4)" for "shape".
std::string attribute_text(const py::array& array, const char* attribute) {
    return std::string(py::repr(array.attr(attribute)));
}

// Returns `object` as a 2-D C-contiguous array of `Element` without copying it, or raises
// TypeError (not an array, wrong dtype) or ValueError (wrong ndim, not contiguous).
template <typename Element>
py::array checked_matrix(const py::object& object, const std::string& name,
                         const std::string& dims) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    const auto array = py::reinterpret_borrow<py::array>(object);
    const py::dtype expected = py::dtype::of<Element>();
    if (!array.dtype().equal(expected)) {
        throw py::type_error(name + " must have dtype " + std::string(py::str(expected)) +
                             ", got " + std::string(py::str(array.dtype())));
    }
    if (array.ndim() != 2) {
        throw py::value_error(name + " must be 2-D " + dims + ", got " +
                              std::to_string(array.ndim()) + "-D shape " +
                              attribute_text(array, "shape"));
    }
    if (!(array.flags() & py::array::c_style)) {
        throw py::value_error(name + " must be C-contiguous, got strides " +
                              attribute_text(array, "strides") + " for shape " +
                              attribute_text(array, "shape") +
                              "; pass numpy.ascontiguousarray(" + name + ")");
    }
    return array;
}

template <typename AElement>
using GemmKernel = void (*)(const AElement*, const std::int8_t*, std::int32_t*, std::size_t,
                            std::size_t, std::size_t);

// Checks a [M, K] and b [K, N], then runs `kernel` without the GIL into a new int32 [M, N].
template <typename AElement>
py::array_t<std::int32_t> run_gemm(const py::object& a_object, const py::object& b_object,
                                   GemmKernel<AElement> kernel, std::size_t max_depth) {
    const py::array a = checked_matrix<AElement>(a_object, "a", "[M, K]");
    const py::array b = checked_matrix<std::int8_t>(b_object, "b", "[K, N]");
    const py::ssize_t m = a.shape(0);
    const py::ssize_t k = a.shape(1);
    const py::ssize_t n = b.shape(1);
    if (b.shape(0) != k) {
        throw py::value_error("b must have shape [K, N] with K = " + std::to_string(k) +
                              " (the columns of a), got shape " + attribute_text(b, "shape"));
    }
    if (static_cast<std::size_t>(k) > max_depth) {
        throw py::value_error("K = " + std::to_string(k) + " is larger than " +
                              std::to_string(max_depth) +
                              ", the most that an int32 accumulator holds without overflow");
    }
    const auto max_elements = static_cast<py::ssize_t>(PY_SSIZE_T_MAX / sizeof(std::int32_t));
    if (n != 0 && m > max_elements / n) {
        throw py::value_error("the result [M, N] = [" + std::to_string(m) + ", " +
                              std::to_string(n) + "] has more int32 elements than fit in memory");
    }

    py::array_t<std::int32_t> c(std::vector<py::ssize_t>{m, n});
    const auto* a_data = static_cast<const AElement*>(a.data());
    const auto* b_data = static_cast<const std::int8_t*>(b.data());
    std::int32_t* c_data = c.mutable_data();
    {
        py::gil_scoped_release release;
        kernel(a_data, b_data, c_data, static_cast<std::size_t>(m), static_cast<std::size_t>(n),
               static_cast<std::size_t>(k));
    }
    return c;
}

py::array_t<std::int32_t> gemm_u8s8s32(const py::object& a, const py::object& b) {
    return run_gemm<std::uint8_t>(a, b, nimbus::kernels::gemm_u8s8s32, kMaxDepthU8S8);
}

py::array_t<std::int32_t> gemm_s8s8s32(const py::object& a, const py::object& b) {
    return run_gemm<std::int8_t>(a, b, nimbus::kernels::gemm_s8s8s32, kMaxDepthS8S8);
}

}  // namespace

PYBIND11_MODULE(_kernels, module) {
    module.doc() = "Native CPU kernels of the nimbus runtime (private: use nimbus.runtime).";
    module.def("gemm_u8s8s32", &gemm_u8s8s32, py::arg("a"), py::arg("b"),
               "Return a @ b as int32 [M, N] for uint8 a [M, K] and int8 b [K, N].\n\n"
               "Both inputs must be C-contiguous numpy arrays; they are read in place.");
    module.def("gemm_s8s8s32", &gemm_s8s8s32, py::arg("a"), py::arg("b"),
               "Return a @ b as int32 [M, N] for int8 a [M, K] and int8 b [K, N].\n\n"
               "Both inputs must be C-contiguous numpy arrays; they are read in place.");
    module.def("kernels_version", [] { return std::string(NIMBUS_VERSION); },
               "Return the nimbus version that the kernels were built from.");
}
