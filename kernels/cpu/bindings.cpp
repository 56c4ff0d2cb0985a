// Python bindings of the CPU kernels: the private extension module nimbus.runtime._kernels.
// Arguments are validated here, before any pointer is read, so bad input raises a Python
// exception that names the argument instead of crashing the process.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "array_allocator.h"
#include "attention.h"
#include "elementwise.h"
#include "gemm.h"
#include "isa.h"
#include "layout.h"
#include "pool.h"
#include "qattention.h"
#include "quantize.h"
#include "reduce.h"
#include "qconv.h"
#include "qgemm.h"
#include "sconv.h"
#include "sconv_block.h"
#include "sgemm.h"
#include "worker_pool.h"

namespace py = pybind11;

namespace {

using nimbus::kernels::ConvGeometry;
using nimbus::kernels::Epilogue;
using nimbus::kernels::Isa;
using nimbus::kernels::isa_name;
using nimbus::kernels::kMaxDepthS8S8;
using nimbus::kernels::kMaxDepthU8S8;
using nimbus::kernels::OutputType;
using nimbus::kernels::PackedConvWeights;
using nimbus::kernels::PackedWeights;

// The Python repr of an array attribute, e.g. "(3, 4)" for "shape".
std::string attribute_text(const py::array& array, const char* attribute) {
    return std::string(py::repr(array.attr(attribute)));
}

// Returns `object` as a C-contiguous array of `Element` and `ndim` dimensions without copying
// it, or raises TypeError (not an array, wrong dtype) or ValueError (wrong ndim, not contiguous).
template <typename Element>
py::array checked_array(const py::object& object, const std::string& name, py::ssize_t ndim,
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
    if (array.ndim() != ndim) {
        throw py::value_error(name + " must be " + std::to_string(ndim) + "-D " + dims + ", got " +
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

template <typename Element>
py::array checked_matrix(const py::object& object, const std::string& name,
                         const std::string& dims) {
    return checked_array<Element>(object, name, 2, dims);
}

void require_depth_fits(py::ssize_t k, std::size_t max_depth) {
    if (static_cast<std::size_t>(k) > max_depth) {
        throw py::value_error("K = " + std::to_string(k) + " is larger than " +
                              std::to_string(max_depth) +
                              ", the most that an int32 accumulator holds without overflow");
    }
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
    require_depth_fits(k, max_depth);
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

// Returns `object` as a C-contiguous 1-D array of `Element` and `length` elements, no copy.
template <typename Element>
py::array checked_vector(const py::object& object, const std::string& name, py::ssize_t length) {
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
    if (array.ndim() != 1 || array.shape(0) != length) {
        throw py::value_error(name + " must have shape (" + std::to_string(length) +
                              ",), one value per output channel, got shape " +
                              attribute_text(array, "shape"));
    }
    if (!(array.flags() & py::array::c_style)) {
        throw py::value_error(name + " must be C-contiguous, got strides " +
                              attribute_text(array, "strides") + "; pass numpy.ascontiguousarray(" +
                              name + ")");
    }
    return array;
}

std::size_t checked_threads(long long threads) {
    if (threads < 1) {
        throw py::value_error("threads must be at least 1, got " + std::to_string(threads));
    }
    return static_cast<std::size_t>(threads);
}

void require_in_range(const std::string& name, long long value, long long lo, long long hi,
                      const std::string& range_name) {
    if (value < lo || value > hi) {
        throw py::value_error(name + " must lie in " + range_name + " [" + std::to_string(lo) +
                              ", " + std::to_string(hi) + "], got " + std::to_string(value));
    }
}

PackedWeights pack_weights(const py::object& w_object, const std::optional<std::string>& isa) {
    const py::array w = checked_matrix<std::int8_t>(w_object, "w", "[N, K]");
    require_depth_fits(w.shape(1), kMaxDepthU8S8);
    const auto* data = static_cast<const std::int8_t*>(w.data());
    const auto n = static_cast<std::size_t>(w.shape(0));
    const auto k = static_cast<std::size_t>(w.shape(1));
    const Isa path = isa ? nimbus::kernels::supported_isa(*isa) : nimbus::kernels::gemm_isa(k, n);
    py::gil_scoped_release release;
    return nimbus::kernels::pack_weights(data, n, k, path);
}

// "(2, 3)" for {2, 3}, like Python prints a shape.
std::string shape_text(const std::vector<py::ssize_t>& shape) {
    std::string text = "(";
    for (std::size_t axis = 0; axis < shape.size(); ++axis) {
        text += (axis ? ", " : "") + std::to_string(shape[axis]);
    }
    return text + (shape.size() == 1 ? ",)" : ")");
}

// A new array of `OutElement` and `shape` (described by `dims`), or `out_object` once checked
// to be one that is writable and shares no memory with the input `a` (named `a_name`), which
// the kernel reads while it writes the result.
template <typename OutElement>
py::array result_array(const py::object& out_object, const std::vector<py::ssize_t>& shape,
                       const std::string& dims, const py::array& a, const std::string& a_name) {
    if (out_object.is_none()) {
        return py::array_t<OutElement>(shape);
    }
    const auto ndim = static_cast<py::ssize_t>(shape.size());
    const py::array out = checked_array<OutElement>(out_object, "out", ndim, dims);
    if (!std::equal(shape.begin(), shape.end(), out.shape())) {
        throw py::value_error("out must have shape " + shape_text(shape) + ", got shape " +
                              attribute_text(out, "shape"));
    }
    if (!out.writeable()) {
        throw py::value_error("out must be writable");
    }
    const auto* out_begin = static_cast<const char*>(out.data());
    const auto* a_begin = static_cast<const char*>(a.data());
    if (out_begin < a_begin + a.nbytes() && a_begin < out_begin + out.nbytes()) {
        throw py::value_error("out must not share memory with " + a_name);
    }
    return out;
}

// Returns `object` as a C-contiguous uint8 or int8 array of `ndim` dimensions, and whether it
// is int8; its zero point must lie in the range of that type.
py::array checked_activations(const py::object& object, const std::string& name,
                              py::ssize_t ndim, const std::string& dims, long long zero_point,
                              bool& is_signed) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    const auto dtype = py::reinterpret_borrow<py::array>(object).dtype();
    is_signed = dtype.equal(py::dtype::of<std::int8_t>());
    if (!is_signed && !dtype.equal(py::dtype::of<std::uint8_t>())) {
        throw py::type_error(name + " must have dtype uint8 or int8, got " +
                             std::string(py::str(dtype)));
    }
    const py::array array = is_signed ? checked_array<std::int8_t>(object, name, ndim, dims)
                                      : checked_array<std::uint8_t>(object, name, ndim, dims);
    if (is_signed) {
        require_in_range("a_zero_point", zero_point, -128, 127, "the int8 range");
    } else {
        require_in_range("a_zero_point", zero_point, 0, 255, "the uint8 range");
    }
    return array;
}

// An optional quantized residual: None, or u8/s8, C-contiguous and of the result's `shape`, with
// its zero point in its type's range and a finite scale. Keeps the array alive in `keep`.
nimbus::kernels::Residual checked_residual(const py::object& object, long long zero_point,
                                           double scale, const std::vector<py::ssize_t>& shape,
                                           const std::string& dims, py::array& keep) {
    nimbus::kernels::Residual residual;
    if (object.is_none()) {
        return residual;
    }
    const auto ndim = static_cast<py::ssize_t>(shape.size());
    const bool is_signed = py::isinstance<py::array>(object) &&
                           py::reinterpret_borrow<py::array>(object).dtype().equal(
                               py::dtype::of<std::int8_t>());
    keep = is_signed ? checked_array<std::int8_t>(object, "residual", ndim, dims)
                     : checked_array<std::uint8_t>(object, "residual", ndim, dims);
    for (py::ssize_t axis = 0; axis < ndim; ++axis) {
        if (keep.shape(axis) != shape[static_cast<std::size_t>(axis)]) {
            throw py::value_error("residual must have the result's shape " + shape_text(shape) +
                                  ", got " + attribute_text(keep, "shape"));
        }
    }
    if (is_signed) {
        require_in_range("residual_zero_point", zero_point, -128, 127, "the int8 range");
    } else {
        require_in_range("residual_zero_point", zero_point, 0, 255, "the uint8 range");
    }
    if (!std::isfinite(scale)) {
        throw py::value_error("residual_scale must be finite, got " + std::to_string(scale));
    }
    residual.data = keep.data();
    residual.is_signed = is_signed;
    residual.zero_point = static_cast<std::int32_t>(zero_point);
    residual.scale = static_cast<float>(scale);
    return residual;
}

// ---- prepared calls ---------------------------------------------------------------------------

// A kernel call with its operands checked and its result allocated (or given as `out`): `run`
// touches no Python object, so it runs without the GIL, now (run_now) or on every run of a
// Program. `keep` holds the arrays and packed weights whose memory `run` reads and writes.
struct PreparedCall {
    std::function<void(std::size_t threads)> run;
    py::array out;
    std::vector<py::object> keep;
};

py::array run_now(const PreparedCall& call, long long threads) {
    const std::size_t thread_count = checked_threads(threads);
    {
        py::gil_scoped_release release;
        call.run(thread_count);
    }
    return call.out;
}

// The Python object of packed weights that pybind11 passed by reference, for PreparedCall::keep.
template <typename Packed>
py::object owner_of(const Packed& packed) {
    return py::cast(&packed, py::return_value_policy::reference);
}

// The residual arguments of the u8/s8 and f32 kernels.
struct ResidualArguments {
    py::object array = py::none();
    long long zero_point = 0;
    double scale = 0.0;
};

// Checks a [M, K] against the packed weights: the GEMM into `out` or a new [M, N] array of
// `OutElement`, as a prepared call.
template <typename OutElement>
PreparedCall prepare_qgemm(const py::object& a_object, const PackedWeights& packed,
                           long long a_zero_point, const py::object& bias_object,
                           Epilogue epilogue, const py::object& out_object,
                           const ResidualArguments& residual_arguments = {}) {
    bool a_signed = false;
    const py::array a =
        checked_activations(a_object, "a", 2, "[M, K]", a_zero_point, a_signed);
    if (static_cast<std::size_t>(a.shape(1)) != packed.k) {
        throw py::value_error("a must have shape [M, K] with K = " + std::to_string(packed.k) +
                              " (the depth of the packed weights), got shape " +
                              attribute_text(a, "shape"));
    }
    const auto n = static_cast<py::ssize_t>(packed.n);
    py::array bias;
    if (!bias_object.is_none()) {
        bias = checked_vector<std::int32_t>(bias_object, "bias", n);
        epilogue.bias = static_cast<const std::int32_t*>(bias.data());
    }
    const py::ssize_t m = a.shape(0);
    const auto max_elements = static_cast<py::ssize_t>(PY_SSIZE_T_MAX / sizeof(OutElement));
    if (n != 0 && m > max_elements / n) {
        throw py::value_error("the result [M, N] = [" + std::to_string(m) + ", " +
                              std::to_string(n) + "] has more elements than fit in memory");
    }

    py::array residual;
    epilogue.residual = checked_residual(residual_arguments.array, residual_arguments.zero_point,
                                         residual_arguments.scale, {m, n}, "[M, N]", residual);
    py::array out = result_array<OutElement>(out_object, {m, n}, "[M, N]", a, "a");
    const void* a_data = a.data();
    void* out_data = out.mutable_data();
    const PackedWeights* weights = &packed;
    const auto zero_point = static_cast<std::int32_t>(a_zero_point);
    return {[=](std::size_t threads) {
                nimbus::kernels::qgemm(a_data, a_signed, static_cast<std::size_t>(m), zero_point,
                                       *weights, epilogue, out_data, threads);
            },
            out,
            {a, owner_of(packed), bias, residual, out}};
}

// Returns the float32 [N] vector `name` after checking that every value is finite.
py::array checked_scales(const py::object& object, const std::string& name, std::size_t n) {
    py::array scales = checked_vector<float>(object, name, static_cast<py::ssize_t>(n));
    const auto* values = static_cast<const float*>(scales.data());
    for (std::size_t col = 0; col < n; ++col) {
        if (!std::isfinite(values[col])) {
            throw py::value_error(name + " must be finite, got " + std::to_string(values[col]) +
                                  " at index " + std::to_string(col));
        }
    }
    return scales;
}

// The u8/s8 epilogue of `n` channels once its arguments are checked. It points into
// `multiplier_object`, which the caller keeps alive. A float activation (gelu, silu, ...) comes
// before quantizing to output_scale: multiplier is then the f32 result's scale, [lo, hi] the
// whole type, and there is no residual.
Epilogue requantizing_epilogue(const py::object& multiplier_object, std::size_t n,
                               long long out_zero_point, long long lo, long long hi,
                               const std::string& out_dtype,
                               const py::object& residual = py::none(),
                               const std::string& activation = "none",
                               const std::optional<double>& output_scale = std::nullopt) {
    Epilogue epilogue;
    long long type_lo = 0;
    long long type_hi = 255;
    if (out_dtype == "u8") {
        epilogue.type = OutputType::u8;
    } else if (out_dtype == "s8") {
        epilogue.type = OutputType::s8;
        type_lo = -128;
        type_hi = 127;
    } else {
        throw py::value_error("out_dtype must be 'u8' or 's8', got '" + out_dtype + "'");
    }
    const std::string range_name = "the " + out_dtype + " range";
    require_in_range("out_zero_point", out_zero_point, type_lo, type_hi, range_name);
    require_in_range("lo", lo, type_lo, type_hi, range_name);
    require_in_range("hi", hi, type_lo, type_hi, range_name);
    if (hi < lo) {
        throw py::value_error("hi must not be less than lo = " + std::to_string(lo) + ", got " +
                              std::to_string(hi));
    }
    const py::array multiplier = checked_scales(multiplier_object, "multiplier", n);
    epilogue.scale = static_cast<const float*>(multiplier.data());
    epilogue.zero_point = static_cast<std::int32_t>(out_zero_point);
    epilogue.lo = static_cast<std::int32_t>(lo);
    epilogue.hi = static_cast<std::int32_t>(hi);
    using nimbus::kernels::Activation;
    epilogue.activation = nimbus::kernels::activation_from_name(activation);
    if (epilogue.activation == Activation::relu || epilogue.activation == Activation::relu6) {
        throw py::value_error("a quantized result takes relu and relu6 as its bounds lo and hi, "
                              "not as activation='" + activation + "'");
    }
    if (epilogue.activation != Activation::none) {
        if (!output_scale || !(*output_scale > 0.0) || !std::isfinite(*output_scale)) {
            throw py::value_error("activation='" + activation + "' needs output_scale, the "
                                  "result's scale (positive and finite)");
        }
        if (!residual.is_none()) {
            throw py::value_error("activation='" + activation + "' takes no residual");
        }
        if (lo != type_lo || hi != type_hi) {
            throw py::value_error("activation='" + activation + "' quantizes to the whole " +
                                  out_dtype + " range: lo and hi must be its bounds");
        }
        epilogue.output_scale = static_cast<float>(*output_scale);
    }
    return epilogue;
}

PreparedCall prepare_qgemm_requantized(
    const py::object& a, const PackedWeights& packed, long long a_zero_point,
    const py::object& bias, const py::object& multiplier_object, long long out_zero_point,
    long long lo, long long hi, const std::string& out_dtype, const py::object& out,
    const py::object& residual, long long residual_zero_point, double residual_scale,
    const std::string& activation, const std::optional<double>& output_scale) {
    const Epilogue epilogue = requantizing_epilogue(multiplier_object, packed.n, out_zero_point,
                                                    lo, hi, out_dtype, residual, activation,
                                                    output_scale);
    const ResidualArguments with{residual, residual_zero_point, residual_scale};
    PreparedCall call =
        epilogue.type == OutputType::u8
            ? prepare_qgemm<std::uint8_t>(a, packed, a_zero_point, bias, epilogue, out, with)
            : prepare_qgemm<std::int8_t>(a, packed, a_zero_point, bias, epilogue, out, with);
    call.keep.push_back(multiplier_object);
    return call;
}

py::array qgemm(const py::object& a, const PackedWeights& packed, long long a_zero_point,
                const py::object& bias, const py::object& multiplier_object,
                long long out_zero_point, long long lo, long long hi,
                const std::string& out_dtype, long long threads, const py::object& out,
                const py::object& residual, long long residual_zero_point,
                double residual_scale, const std::string& activation,
                const std::optional<double>& output_scale) {
    return run_now(prepare_qgemm_requantized(a, packed, a_zero_point, bias, multiplier_object,
                                             out_zero_point, lo, hi, out_dtype, out, residual,
                                             residual_zero_point, residual_scale, activation,
                                             output_scale),
                   threads);
}

PreparedCall prepare_qgemm_f32(const py::object& a, const PackedWeights& packed,
                               long long a_zero_point, const py::object& bias,
                               const py::object& scale_object, const py::object& out,
                               const py::object& residual, long long residual_zero_point,
                               double residual_scale, const std::string& activation) {
    Epilogue epilogue;
    epilogue.type = OutputType::f32;
    epilogue.activation = nimbus::kernels::activation_from_name(activation);
    const py::array scale = checked_scales(scale_object, "scale", packed.n);
    epilogue.scale = static_cast<const float*>(scale.data());
    PreparedCall call = prepare_qgemm<float>(a, packed, a_zero_point, bias, epilogue, out,
                                             {residual, residual_zero_point, residual_scale});
    call.keep.push_back(scale);
    return call;
}

py::array qgemm_f32(const py::object& a, const PackedWeights& packed, long long a_zero_point,
                    const py::object& bias, const py::object& scale_object, long long threads,
                    const py::object& out, const py::object& residual,
                    long long residual_zero_point, double residual_scale,
                    const std::string& activation) {
    return run_now(prepare_qgemm_f32(a, packed, a_zero_point, bias, scale_object, out, residual,
                                     residual_zero_point, residual_scale, activation),
                   threads);
}

py::array qgemm_s32(const py::object& a, const PackedWeights& packed, long long a_zero_point,
                    const py::object& bias, long long threads, const py::object& out) {
    return run_now(prepare_qgemm<std::int32_t>(a, packed, a_zero_point, bias, Epilogue{}, out),
                   threads);
}

// ---- int8 convolution ------------------------------------------------------------------------

// Geometry values past this bound could overflow the index arithmetic of the kernels.
constexpr long long kMaxGeometryValue = 1 << 24;

PackedConvWeights pack_conv_weights(const py::object& w_object, long long groups,
                                    const std::optional<std::string>& isa) {
    const py::array w = checked_array<std::int8_t>(w_object, "w", 4, "[O, I / groups, KH, KW]");
    const auto out_channels = static_cast<long long>(w.shape(0));
    if (groups < 1 || out_channels % groups != 0) {
        throw py::value_error("groups must be a positive divisor of the " +
                              std::to_string(out_channels) + " output channels, got " +
                              std::to_string(groups));
    }
    if (w.shape(2) < 1 || w.shape(3) < 1) {
        throw py::value_error("w must have a kernel of at least 1x1, got shape " +
                              attribute_text(w, "shape"));
    }
    const auto group_channels = static_cast<std::size_t>(w.shape(1));
    const auto kernel_h = static_cast<std::size_t>(w.shape(2));
    const auto kernel_w = static_cast<std::size_t>(w.shape(3));
    require_in_range("kernel height", w.shape(2), 1, kMaxGeometryValue, "the range");
    require_in_range("kernel width", w.shape(3), 1, kMaxGeometryValue, "the range");
    const auto group_outputs = static_cast<std::size_t>(out_channels / groups);
    const Isa path = isa ? nimbus::kernels::supported_isa(*isa)
                         : nimbus::kernels::gemm_isa(kernel_h * kernel_w * group_channels,
                                                     group_outputs);
    const std::size_t depth = nimbus::kernels::conv_gemm_depth(
        kernel_h, kernel_w, group_channels, static_cast<std::size_t>(groups), path);
    require_depth_fits(static_cast<py::ssize_t>(depth), kMaxDepthU8S8);
    const auto* data = static_cast<const std::int8_t*>(w.data());
    py::gil_scoped_release release;
    return nimbus::kernels::pack_conv_weights(data, static_cast<std::size_t>(out_channels),
                                              group_channels, kernel_h, kernel_w,
                                              static_cast<std::size_t>(groups), path);
}

// Checks that `values` holds `count` integers in [lo, kMaxGeometryValue].
void require_geometry(const std::string& name, const std::vector<long long>& values,
                      std::size_t count, long long lo) {
    if (values.size() != count) {
        throw py::value_error(name + " must hold " + std::to_string(count) + " integers, got " +
                              std::to_string(values.size()));
    }
    for (const long long value : values) {
        require_in_range(name + " values", value, lo, kMaxGeometryValue, "the range");
    }
}

// The geometry of x [N, H, W, C] under the packed weights, stride (h, w), padding
// [top, left, bottom, right] and dilation (h, w), or ValueError.
std::vector<py::ssize_t> shape_of(const py::array& array) {
    return {array.shape(), array.shape() + array.ndim()};
}

// The geometry of the packed weights over an input of `shape` [N, H, W, C] (x itself, or what a
// block computes from x inside a kernel).
ConvGeometry checked_geometry(const py::array& x, const std::vector<py::ssize_t>& shape,
                              const PackedConvWeights& packed,
                              const std::vector<long long>& stride,
                              const std::vector<long long>& padding,
                              const std::vector<long long>& dilation) {
    require_geometry("stride", stride, 2, 1);
    require_geometry("padding", padding, 4, 0);
    require_geometry("dilation", dilation, 2, 1);
    const std::size_t channels = packed.group_channels * packed.groups;
    if (static_cast<std::size_t>(shape[3]) != channels) {
        throw py::value_error("x must have shape [N, H, W, C] with C = " +
                              std::to_string(channels) +
                              " (the input channels of the packed weights), got shape " +
                              attribute_text(x, "shape"));
    }
    require_in_range("x height", shape[1], 0, kMaxGeometryValue, "the range");
    require_in_range("x width", shape[2], 0, kMaxGeometryValue, "the range");
    ConvGeometry g;
    g.batch = static_cast<std::size_t>(shape[0]);
    g.height = static_cast<std::size_t>(shape[1]);
    g.width = static_cast<std::size_t>(shape[2]);
    g.channels = channels;
    g.stride_h = static_cast<std::size_t>(stride[0]);
    g.stride_w = static_cast<std::size_t>(stride[1]);
    g.pad_top = static_cast<std::size_t>(padding[0]);
    g.pad_left = static_cast<std::size_t>(padding[1]);
    g.pad_bottom = static_cast<std::size_t>(padding[2]);
    g.pad_right = static_cast<std::size_t>(padding[3]);
    g.dilation_h = static_cast<std::size_t>(dilation[0]);
    g.dilation_w = static_cast<std::size_t>(dilation[1]);
    g.out_h = nimbus::kernels::conv_output_size(g.height, packed.kernel_h, g.stride_h, g.pad_top,
                                                g.pad_bottom, g.dilation_h);
    g.out_w = nimbus::kernels::conv_output_size(g.width, packed.kernel_w, g.stride_w, g.pad_left,
                                                g.pad_right, g.dilation_w);
    if (g.out_h == 0 || g.out_w == 0) {
        throw py::value_error(
            "the " + std::to_string(packed.kernel_h) + "x" + std::to_string(packed.kernel_w) +
            " kernel with dilation (" + std::to_string(g.dilation_h) + ", " +
            std::to_string(g.dilation_w) + ") does not fit the padded input of " +
            std::to_string(g.height + g.pad_top + g.pad_bottom) + "x" +
            std::to_string(g.width + g.pad_left + g.pad_right));
    }
    return g;
}

ConvGeometry checked_geometry(const py::array& x, const PackedConvWeights& packed,
                              const std::vector<long long>& stride,
                              const std::vector<long long>& padding,
                              const std::vector<long long>& dilation) {
    return checked_geometry(x, shape_of(x), packed, stride, padding, dilation);
}

// A convolution's input x [N, H, W, C] (u8 or s8), its geometry under the packed weights, and
// its bias (none when None), checked.
struct ConvOperands {
    py::array x;
    bool x_signed = false;
    ConvGeometry geometry;
    py::array bias;
};

// Checks the operands of a convolution over the packed weights; the epilogue gets the bias.
ConvOperands checked_conv_operands(const py::object& x_object, const PackedConvWeights& packed,
                                   long long a_zero_point, const py::object& bias_object,
                                   const std::vector<long long>& stride,
                                   const std::vector<long long>& padding,
                                   const std::vector<long long>& dilation, Epilogue& epilogue) {
    ConvOperands conv;
    conv.x = checked_activations(x_object, "x", 4, "[N, H, W, C]", a_zero_point, conv.x_signed);
    conv.geometry = checked_geometry(conv.x, packed, stride, padding, dilation);
    if (!bias_object.is_none()) {
        conv.bias = checked_vector<std::int32_t>(bias_object, "bias",
                                                 static_cast<py::ssize_t>(packed.out_channels));
        epilogue.bias = static_cast<const std::int32_t*>(conv.bias.data());
    }
    return conv;
}

// ValueError unless an array of `shape` and `Element`s fits in memory.
template <typename Element>
void require_fits(const std::vector<py::ssize_t>& shape) {
    const auto max_elements = static_cast<double>(PY_SSIZE_T_MAX / sizeof(Element));
    double elements = 1.0;
    for (const py::ssize_t size : shape) {
        elements *= static_cast<double>(size);
    }
    if (elements > max_elements) {
        throw py::value_error("the result " + shape_text(shape) +
                              " has more elements than fit in memory");
    }
}

// Checks x [N, H, W, C] and the geometry against the packed weights: the convolution into
// `out` or a new [N, OH, OW, O] array of `OutElement`, as a prepared call.
template <typename OutElement>
PreparedCall prepare_qconv2d(const py::object& x_object, const PackedConvWeights& packed,
                             long long a_zero_point, const py::object& bias_object,
                             Epilogue epilogue, const std::vector<long long>& stride,
                             const std::vector<long long>& padding,
                             const std::vector<long long>& dilation,
                             const py::object& out_object,
                             const ResidualArguments& residual_arguments = {}) {
    const ConvOperands conv = checked_conv_operands(x_object, packed, a_zero_point, bias_object,
                                                    stride, padding, dilation, epilogue);
    const py::array& x = conv.x;
    const bool x_signed = conv.x_signed;
    const ConvGeometry& geometry = conv.geometry;
    const std::vector<py::ssize_t> shape{x.shape(0), static_cast<py::ssize_t>(geometry.out_h),
                                         static_cast<py::ssize_t>(geometry.out_w),
                                         static_cast<py::ssize_t>(packed.out_channels)};
    require_fits<OutElement>(shape);

    py::array residual;
    epilogue.residual = checked_residual(residual_arguments.array, residual_arguments.zero_point,
                                         residual_arguments.scale, shape, "[N, OH, OW, O]",
                                         residual);
    if (epilogue.residual.data != nullptr && (packed.depthwise || packed.groups != 1)) {
        throw py::value_error("a residual needs a convolution of one group, got groups = " +
                              std::to_string(packed.groups));
    }
    py::array out = result_array<OutElement>(out_object, shape, "[N, OH, OW, O]", x, "x");
    const void* x_data = x.data();
    void* out_data = out.mutable_data();
    const PackedConvWeights* weights = &packed;
    const auto zero_point = static_cast<std::int32_t>(a_zero_point);
    return {[=](std::size_t threads) {
                nimbus::kernels::qconv2d(x_data, x_signed, zero_point, geometry, *weights,
                                         epilogue, out_data, threads);
            },
            out,
            {x, owner_of(packed), conv.bias, residual, out}};
}

PreparedCall prepare_qconv2d_requantized(
    const py::object& x, const PackedConvWeights& packed, long long a_zero_point,
    const py::object& bias, const py::object& multiplier_object, long long out_zero_point,
    long long lo, long long hi, const std::string& out_dtype,
    const std::vector<long long>& stride, const std::vector<long long>& padding,
    const std::vector<long long>& dilation, const py::object& out, const py::object& residual,
    long long residual_zero_point, double residual_scale, const std::string& activation,
    const std::optional<double>& output_scale) {
    const Epilogue epilogue =
        requantizing_epilogue(multiplier_object, packed.out_channels, out_zero_point, lo, hi,
                              out_dtype, residual, activation, output_scale);
    const ResidualArguments with{residual, residual_zero_point, residual_scale};
    PreparedCall call =
        epilogue.type == OutputType::u8
            ? prepare_qconv2d<std::uint8_t>(x, packed, a_zero_point, bias, epilogue, stride,
                                            padding, dilation, out, with)
            : prepare_qconv2d<std::int8_t>(x, packed, a_zero_point, bias, epilogue, stride,
                                           padding, dilation, out, with);
    call.keep.push_back(multiplier_object);
    return call;
}

py::array qconv2d(const py::object& x, const PackedConvWeights& packed, long long a_zero_point,
                  const py::object& bias, const py::object& multiplier_object,
                  long long out_zero_point, long long lo, long long hi,
                  const std::string& out_dtype, const std::vector<long long>& stride,
                  const std::vector<long long>& padding, const std::vector<long long>& dilation,
                  long long threads, const py::object& out, const py::object& residual,
                  long long residual_zero_point, double residual_scale,
                  const std::string& activation, const std::optional<double>& output_scale) {
    return run_now(prepare_qconv2d_requantized(x, packed, a_zero_point, bias, multiplier_object,
                                               out_zero_point, lo, hi, out_dtype, stride,
                                               padding, dilation, out, residual,
                                               residual_zero_point, residual_scale, activation,
                                               output_scale),
                   threads);
}

PreparedCall prepare_qconv2d_f32(const py::object& x, const PackedConvWeights& packed,
                                 long long a_zero_point, const py::object& bias,
                                 const py::object& scale_object,
                                 const std::vector<long long>& stride,
                                 const std::vector<long long>& padding,
                                 const std::vector<long long>& dilation, const py::object& out,
                                 const py::object& residual, long long residual_zero_point,
                                 double residual_scale, const std::string& activation) {
    Epilogue epilogue;
    epilogue.type = OutputType::f32;
    epilogue.activation = nimbus::kernels::activation_from_name(activation);
    const py::array scale = checked_scales(scale_object, "scale", packed.out_channels);
    epilogue.scale = static_cast<const float*>(scale.data());
    PreparedCall call =
        prepare_qconv2d<float>(x, packed, a_zero_point, bias, epilogue, stride, padding,
                               dilation, out, {residual, residual_zero_point, residual_scale});
    call.keep.push_back(scale);
    return call;
}

py::array qconv2d_f32(const py::object& x, const PackedConvWeights& packed,
                      long long a_zero_point, const py::object& bias,
                      const py::object& scale_object, const std::vector<long long>& stride,
                      const std::vector<long long>& padding,
                      const std::vector<long long>& dilation, long long threads,
                      const py::object& out, const py::object& residual,
                      long long residual_zero_point, double residual_scale,
                      const std::string& activation) {
    return run_now(prepare_qconv2d_f32(x, packed, a_zero_point, bias, scale_object, stride,
                                       padding, dilation, out, residual, residual_zero_point,
                                       residual_scale, activation),
                   threads);
}

py::array qconv2d_s32(const py::object& x, const PackedConvWeights& packed,
                      long long a_zero_point, const py::object& bias,
                      const std::vector<long long>& stride, const std::vector<long long>& padding,
                      const std::vector<long long>& dilation, long long threads,
                      const py::object& out) {
    return run_now(prepare_qconv2d<std::int32_t>(x, packed, a_zero_point, bias, Epilogue{},
                                                 stride, padding, dilation, out),
                   threads);
}

// ---- pooling ---------------------------------------------------------------------------------

using nimbus::kernels::PoolGeometry;

// The pooling of an input of `shape` [N, H, W, C] (named `name`), checked; out_hw comes from the
// caller, which knows the ceil mode. Any geometry within the bounds reads inside the input.
PoolGeometry checked_pool_geometry(const std::vector<py::ssize_t>& shape, const std::string& name,
                                   const std::vector<long long>& kernel,
                                   const std::vector<long long>& stride,
                                   const std::vector<long long>& padding,
                                   const std::vector<long long>& dilation,
                                   const std::vector<long long>& out_hw) {
    require_geometry("kernel", kernel, 2, 1);
    require_geometry("stride", stride, 2, 1);
    require_geometry("padding", padding, 4, 0);
    require_geometry("dilation", dilation, 2, 1);
    require_geometry("out_hw", out_hw, 2, 0);
    for (std::size_t axis = 0; axis < 4; ++axis) {
        require_in_range(name + " dimension " + std::to_string(axis), shape[axis], 0,
                         kMaxGeometryValue, "the range");
    }
    PoolGeometry g;
    g.batch = static_cast<std::size_t>(shape[0]);
    g.height = static_cast<std::size_t>(shape[1]);
    g.width = static_cast<std::size_t>(shape[2]);
    g.channels = static_cast<std::size_t>(shape[3]);
    g.kernel_h = static_cast<std::size_t>(kernel[0]);
    g.kernel_w = static_cast<std::size_t>(kernel[1]);
    g.stride_h = static_cast<std::size_t>(stride[0]);
    g.stride_w = static_cast<std::size_t>(stride[1]);
    g.pad_top = static_cast<std::size_t>(padding[0]);
    g.pad_left = static_cast<std::size_t>(padding[1]);
    g.dilation_h = static_cast<std::size_t>(dilation[0]);
    g.dilation_w = static_cast<std::size_t>(dilation[1]);
    g.out_h = static_cast<std::size_t>(out_hw[0]);
    g.out_w = static_cast<std::size_t>(out_hw[1]);
    return g;
}

// out [N, OH, OW, C] of the dtype of x [N, H, W, C] (uint8, int8 or float32).
PreparedCall prepare_max_pool2d(const py::object& x_object, const std::vector<long long>& kernel,
                                const std::vector<long long>& stride,
                                const std::vector<long long>& padding,
                                const std::vector<long long>& dilation,
                                const std::vector<long long>& out_hw,
                                const py::object& out_object) {
    using nimbus::kernels::PoolElement;
    if (!py::isinstance<py::array>(x_object)) {
        throw py::type_error("x must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(x_object.ptr())->tp_name));
    }
    const py::dtype dtype = py::reinterpret_borrow<py::array>(x_object).dtype();
    PoolElement type = PoolElement::f32;
    py::array x;
    const std::string dims = "[N, H, W, C]";
    if (dtype.equal(py::dtype::of<std::uint8_t>())) {
        type = PoolElement::u8;
        x = checked_array<std::uint8_t>(x_object, "x", 4, dims);
    } else if (dtype.equal(py::dtype::of<std::int8_t>())) {
        type = PoolElement::s8;
        x = checked_array<std::int8_t>(x_object, "x", 4, dims);
    } else if (dtype.equal(py::dtype::of<float>())) {
        x = checked_array<float>(x_object, "x", 4, dims);
    } else {
        throw py::type_error("x must have dtype uint8, int8 or float32, got " +
                             std::string(py::str(dtype)));
    }
    const PoolGeometry g =
        checked_pool_geometry(shape_of(x), "x", kernel, stride, padding, dilation, out_hw);
    const std::vector<py::ssize_t> shape{x.shape(0), out_hw[0], out_hw[1], x.shape(3)};
    py::array out;
    if (type == PoolElement::u8) {
        out = result_array<std::uint8_t>(out_object, shape, dims, x, "x");
    } else if (type == PoolElement::s8) {
        out = result_array<std::int8_t>(out_object, shape, dims, x, "x");
    } else {
        out = result_array<float>(out_object, shape, dims, x, "x");
    }
    const void* x_data = x.data();
    void* out_data = out.mutable_data();
    return {[=](std::size_t threads) {
                nimbus::kernels::max_pool2d(x_data, type, g, out_data, threads);
            },
            out,
            {x, out}};
}

// The pooling of a convolution's result [N, OH, OW, O] (the convolution of `kernel_h` rows
// over geometry g), checked.
PoolGeometry checked_result_pooling(const ConvGeometry& g, std::size_t channels,
                                    const std::vector<long long>& kernel,
                                    const std::vector<long long>& stride,
                                    const std::vector<long long>& padding,
                                    const std::vector<long long>& dilation,
                                    const std::vector<long long>& out_hw) {
    return checked_pool_geometry(
        {static_cast<py::ssize_t>(g.batch), static_cast<py::ssize_t>(g.out_h),
         static_cast<py::ssize_t>(g.out_w), static_cast<py::ssize_t>(channels)},
        "the convolution's result", kernel, stride, padding, dilation, out_hw);
}

// ValueError unless the convolution and the pooling of its result run in bands (conv_pool.cpp):
// image rows in every convolution row, and every pooling window starting above the
// convolution's last row (as floor and ceil modes make them).
void require_bands(const ConvGeometry& g, std::size_t kernel_h, const PoolGeometry& pool) {
    const std::size_t span = (kernel_h - 1) * g.dilation_h + 1;
    if (g.pad_top >= span || g.pad_bottom >= span) {
        throw py::value_error("padding rows must be fewer than the kernel's rows (" +
                              std::to_string(span) + ") to fuse the pooling");
    }
    if (pool.out_h > 0 && (pool.out_h - 1) * pool.stride_h >= g.out_h + pool.pad_top) {
        throw py::value_error("the last pooling window starts below the convolution's result");
    }
}

// A requantizing convolution (u8 or s8 result) and the max pooling of its result, in one call
// (conv_pool.cpp): out [N, POH, POW, O].
PreparedCall prepare_qconv2d_max_pool2d(
    const py::object& x_object, const PackedConvWeights& packed, long long a_zero_point,
    const py::object& bias_object, const py::object& multiplier_object, long long out_zero_point,
    long long lo, long long hi, const std::string& out_dtype,
    const std::vector<long long>& stride, const std::vector<long long>& padding,
    const std::vector<long long>& dilation, const std::vector<long long>& pool_kernel,
    const std::vector<long long>& pool_stride, const std::vector<long long>& pool_padding,
    const std::vector<long long>& pool_dilation, const std::vector<long long>& pool_out_hw,
    const py::object& out_object) {
    Epilogue epilogue = requantizing_epilogue(multiplier_object, packed.out_channels,
                                              out_zero_point, lo, hi, out_dtype);
    const ConvOperands conv = checked_conv_operands(x_object, packed, a_zero_point, bias_object,
                                                    stride, padding, dilation, epilogue);
    const ConvGeometry& g = conv.geometry;
    const auto channels = static_cast<py::ssize_t>(packed.out_channels);
    const PoolGeometry pool = checked_result_pooling(g, packed.out_channels, pool_kernel,
                                                     pool_stride, pool_padding, pool_dilation,
                                                     pool_out_hw);
    require_bands(g, packed.kernel_h, pool);
    const std::vector<py::ssize_t> shape{conv.x.shape(0), pool_out_hw[0], pool_out_hw[1],
                                         channels};
    require_fits<std::uint8_t>(shape);
    py::array out = epilogue.type == OutputType::u8
                        ? result_array<std::uint8_t>(out_object, shape, "[N, POH, POW, O]",
                                                     conv.x, "x")
                        : result_array<std::int8_t>(out_object, shape, "[N, POH, POW, O]",
                                                    conv.x, "x");
    const void* x_data = conv.x.data();
    void* out_data = out.mutable_data();
    const PackedConvWeights* weights = &packed;
    const auto zero_point = static_cast<std::int32_t>(a_zero_point);
    const bool x_signed = conv.x_signed;
    return {[=](std::size_t threads) {
                nimbus::kernels::qconv2d_max_pool2d(x_data, x_signed, zero_point, g, *weights,
                                                    epilogue, pool, out_data, threads);
            },
            out,
            {conv.x, owner_of(packed), conv.bias, multiplier_object, out}};
}

// out [N, OH, OW, C] (float32) = the average pooling of x [N, H, W, C] (float32); padding is
// [top, left, bottom, right].
PreparedCall prepare_avg_pool2d(const py::object& x_object, const std::vector<long long>& kernel,
                                const std::vector<long long>& stride,
                                const std::vector<long long>& padding,
                                const std::vector<long long>& out_hw, bool count_include_pad,
                                const py::object& out_object) {
    const std::string dims = "[N, H, W, C]";
    const py::array x = checked_array<float>(x_object, "x", 4, dims);
    const PoolGeometry g =
        checked_pool_geometry(shape_of(x), "x", kernel, stride, padding, {1, 1}, out_hw);
    py::array out = result_array<float>(out_object, {x.shape(0), out_hw[0], out_hw[1], x.shape(3)},
                                        dims, x, "x");
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto pad_bottom = static_cast<std::size_t>(padding[2]);
    const auto pad_right = static_cast<std::size_t>(padding[3]);
    return {[=](std::size_t threads) {
                nimbus::kernels::avg_pool2d(x_data, g, pad_bottom, pad_right, count_include_pad,
                                            out_data, threads, nimbus::kernels::selected_isa());
            },
            out,
            {x, out}};
}

py::array avg_pool2d(const py::object& x_object, const std::vector<long long>& kernel,
                     const std::vector<long long>& stride, const std::vector<long long>& padding,
                     const std::vector<long long>& out_hw, bool count_include_pad,
                     long long threads) {
    return run_now(prepare_avg_pool2d(x_object, kernel, stride, padding, out_hw,
                                      count_include_pad, py::none()),
                   threads);
}

py::array max_pool2d(const py::object& x_object, const std::vector<long long>& kernel,
                     const std::vector<long long>& stride, const std::vector<long long>& padding,
                     const std::vector<long long>& dilation,
                     const std::vector<long long>& out_hw, long long threads) {
    return run_now(prepare_max_pool2d(x_object, kernel, stride, padding, dilation, out_hw,
                                      py::none()),
                   threads);
}


// ---- float32 GEMM and convolution ------------------------------------------------------------

using nimbus::kernels::Activation;
using nimbus::kernels::InvertedResidual;
using nimbus::kernels::PackedSconvWeights;
using nimbus::kernels::PackedSgemmWeights;
using nimbus::kernels::SgemmEpilogue;

Isa requested_isa(const std::optional<std::string>& isa) {
    return isa ? nimbus::kernels::supported_isa(*isa) : nimbus::kernels::selected_isa();
}

PackedSgemmWeights pack_sgemm_weights(const py::object& w_object,
                                      const std::optional<std::string>& isa) {
    const py::array w = checked_matrix<float>(w_object, "w", "[N, K]");
    const Isa path = requested_isa(isa);
    const auto* data = static_cast<const float*>(w.data());
    const auto n = static_cast<std::size_t>(w.shape(0));
    const auto k = static_cast<std::size_t>(w.shape(1));
    py::gil_scoped_release release;
    return nimbus::kernels::pack_sgemm_weights(data, n, k, path);
}

// out[n, p, c] = x[n, c, p] for x [N, C, H, W] (channels_last) or [N, H, W, C] (not), both
// C-contiguous float32, uint8 or int8: a model's NCHW input for the channels-last kernels, or
// their result for a flatten in NCHW order.
PreparedCall prepare_channel_move(const py::object& x_object, bool channels_last,
                                  const py::object& out_object) {
    const std::string dims = channels_last ? "[N, C, H, W]" : "[N, H, W, C]";
    const std::string out_dims = channels_last ? "[N, H, W, C]" : "[N, C, H, W]";
    if (!py::isinstance<py::array>(x_object)) {
        throw py::type_error("x must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(x_object.ptr())->tp_name));
    }
    const py::dtype dtype = py::reinterpret_borrow<py::array>(x_object).dtype();
    const bool bytes = dtype.equal(py::dtype::of<std::uint8_t>()) ||
                       dtype.equal(py::dtype::of<std::int8_t>());
    const py::array x = bytes ? (dtype.equal(py::dtype::of<std::uint8_t>())
                                     ? checked_array<std::uint8_t>(x_object, "x", 4, dims)
                                     : checked_array<std::int8_t>(x_object, "x", 4, dims))
                              : checked_array<float>(x_object, "x", 4, dims);
    const std::vector<py::ssize_t> shape =
        channels_last ? std::vector<py::ssize_t>{x.shape(0), x.shape(2), x.shape(3), x.shape(1)}
                      : std::vector<py::ssize_t>{x.shape(0), x.shape(3), x.shape(1), x.shape(2)};
    py::array out = !bytes ? result_array<float>(out_object, shape, out_dims, x, "x")
                    : dtype.equal(py::dtype::of<std::uint8_t>())
                        ? result_array<std::uint8_t>(out_object, shape, out_dims, x, "x")
                        : result_array<std::int8_t>(out_object, shape, out_dims, x, "x");
    const void* source = x.data();
    void* target = out.mutable_data();
    const auto batch = static_cast<std::size_t>(x.shape(0));
    // The planes and the pixels of each plane, in x's order.
    const auto planes =
        static_cast<std::size_t>(channels_last ? x.shape(1) : x.shape(1) * x.shape(2));
    const auto plane_size =
        static_cast<std::size_t>(channels_last ? x.shape(2) * x.shape(3) : x.shape(3));
    return {[=](std::size_t threads) {
                if (bytes) {
                    nimbus::kernels::nchw_to_nhwc(static_cast<const std::uint8_t*>(source),
                                                  batch, planes, plane_size,
                                                  static_cast<std::uint8_t*>(target), threads);
                } else {
                    nimbus::kernels::nchw_to_nhwc(static_cast<const float*>(source), batch,
                                                  planes, plane_size,
                                                  static_cast<float*>(target), threads);
                }
            },
            out,
            {x, out}};
}

py::array to_channels_last(const py::object& x_object, long long threads) {
    checked_array<float>(x_object, "x", 4, "[N, C, H, W]");
    return run_now(prepare_channel_move(x_object, true, py::none()), threads);
}

// out [O, I] = mean over L of x [O, L, I] (float32, C-contiguous, L >= 1), summed in float64.
PreparedCall prepare_mean_axis(const py::object& x_object, const py::object& out_object) {
    const py::array x = checked_array<float>(x_object, "x", 3, "[O, L, I]");
    if (x.shape(1) < 1) {
        throw py::value_error("x must have at least one value to average over (axis 1), got "
                              "shape " + attribute_text(x, "shape"));
    }
    py::array out = result_array<float>(out_object, {x.shape(0), x.shape(2)}, "[O, I]", x, "x");
    const auto* source = static_cast<const float*>(x.data());
    auto* target = static_cast<float*>(out.mutable_data());
    const auto outer = static_cast<std::size_t>(x.shape(0));
    const auto length = static_cast<std::size_t>(x.shape(1));
    const auto inner = static_cast<std::size_t>(x.shape(2));
    return {[=](std::size_t threads) {
                nimbus::kernels::mean_axis(source, outer, length, inner, target, threads,
                                           nimbus::kernels::selected_isa());
            },
            out,
            {x, out}};
}

py::array mean_axis(const py::object& x_object, long long threads) {
    return run_now(prepare_mean_axis(x_object, py::none()), threads);
}

// act(x) as a new float32 array of x's shape, for any C-contiguous float32 x.
py::array activation(const py::object& x_object, const std::string& name, long long threads) {
    if (!py::isinstance<py::array>(x_object)) {
        throw py::type_error("x must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(x_object.ptr())->tp_name));
    }
    const auto ndim = py::reinterpret_borrow<py::array>(x_object).ndim();
    const py::array x = checked_array<float>(x_object, "x", ndim, "(any shape)");
    const auto kind = nimbus::kernels::activation_from_name(name);
    const std::size_t thread_count = checked_threads(threads);
    py::array out(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + ndim));
    const auto count = static_cast<std::size_t>(x.size());
    const auto* source = static_cast<const float*>(x.data());
    auto* target = static_cast<float*>(out.mutable_data());
    // Chunks big enough that handing one to a pooled thread costs little beside it.
    constexpr std::size_t kChunk = 16384;
    {
        py::gil_scoped_release release;
        const nimbus::kernels::Isa isa = nimbus::kernels::selected_isa();
        nimbus::kernels::parallel_for((count + kChunk - 1) / kChunk, thread_count,
                                      [&](std::size_t chunk) {
            const std::size_t begin = chunk * kChunk;
            const std::size_t length = std::min(kChunk, count - begin);
            std::copy(source + begin, source + begin + length, target + begin);
            nimbus::kernels::activate(target + begin, length, kind, isa);
        });
    }
    return out;
}

// ---- fused elementwise regions ----------------------------------------------------------------

// A checked elementwise program (elementwise.h), built once per fused expression.
struct ElementwiseProgram {
    std::vector<nimbus::kernels::ElementwiseStep> steps;
    std::size_t operands = 0;
};

// The program of (op, index, a, b) steps: op is input, constant, add, sub, mul, div, maximum,
// minimum, neg, abs, sqrt, clip or an activation's name (gelu, sigmoid, ...).
ElementwiseProgram elementwise_program(
    const std::vector<std::tuple<std::string, long long, double, double>>& steps) {
    using nimbus::kernels::ElementwiseOp;
    static const std::pair<const char*, ElementwiseOp> kOps[] = {
        {"input", ElementwiseOp::input},     {"constant", ElementwiseOp::constant},
        {"add", ElementwiseOp::add},         {"sub", ElementwiseOp::sub},
        {"mul", ElementwiseOp::mul},         {"div", ElementwiseOp::div},
        {"maximum", ElementwiseOp::maximum}, {"minimum", ElementwiseOp::minimum},
        {"neg", ElementwiseOp::neg},         {"abs", ElementwiseOp::abs},
        {"sqrt", ElementwiseOp::sqrt},       {"clip", ElementwiseOp::clip}};
    ElementwiseProgram program;
    for (const auto& [name, index, a, b] : steps) {
        nimbus::kernels::ElementwiseStep step;
        const auto* known = std::find_if(std::begin(kOps), std::end(kOps),
                                         [&](const auto& op) { return name == op.first; });
        if (known != std::end(kOps)) {
            step.op = known->second;
        } else {
            try {
                step.activation = nimbus::kernels::activation_from_name(name);
            } catch (const std::invalid_argument&) {
                throw py::value_error("unknown elementwise step '" + name + "'");
            }
            step.op = ElementwiseOp::activation;
        }
        if (step.op == ElementwiseOp::input && (index < 0 || index > 1024)) {
            throw py::value_error("elementwise input index must be in [0, 1024], got " +
                                  std::to_string(index));
        }
        step.index = step.op == ElementwiseOp::input ? static_cast<std::size_t>(index) : 0;
        step.a = static_cast<float>(a);
        step.b = static_cast<float>(b);
        program.steps.push_back(step);
    }
    try {
        program.operands = nimbus::kernels::check_elementwise_program(program.steps);
    } catch (const std::invalid_argument& error) {
        throw py::value_error(error.what());
    }
    return program;
}

nimbus::kernels::ElementType element_type(const py::array& array, std::size_t index) {
    using nimbus::kernels::ElementType;
    const char kind = array.dtype().kind();
    const auto size = array.itemsize();
    if (kind == 'f' && size == 4) return ElementType::f32;
    if (kind == 'f' && size == 8) return ElementType::f64;
    if (kind == 'i' && size == 8) return ElementType::i64;
    if (kind == 'i' && size == 4) return ElementType::i32;
    if (kind == 'i' && size == 2) return ElementType::i16;
    if (kind == 'i' && size == 1) return ElementType::i8;
    if (kind == 'u' && size == 1) return ElementType::u8;
    if (kind == 'b') return ElementType::boolean;
    throw py::type_error("elementwise input " + std::to_string(index) +
                         " must be float32/64, int8/16/32/64, uint8 or bool, got " +
                         std::string(py::str(array.dtype())));
}

// The program over `inputs` broadcast together (numpy's rules) into `out` or a new float32
// array, as a prepared call.
PreparedCall prepare_elementwise(const ElementwiseProgram& program, const py::list& input_objects,
                                 const py::object& out_object) {
    if (input_objects.size() < program.operands) {
        throw py::value_error("the elementwise program reads " + std::to_string(program.operands) +
                              " inputs, got " + std::to_string(input_objects.size()));
    }
    std::vector<py::array> inputs;
    std::size_t ndim = 0;
    for (const auto& object : input_objects) {
        inputs.push_back(py::array::ensure(object));
        if (!inputs.back()) {
            throw py::type_error("elementwise inputs must be arrays");
        }
        ndim = std::max(ndim, static_cast<std::size_t>(inputs.back().ndim()));
    }
    std::vector<py::ssize_t> shape(ndim, 1);
    for (const auto& input : inputs) {
        const std::size_t skip = ndim - static_cast<std::size_t>(input.ndim());
        for (py::ssize_t d = 0; d < input.ndim(); ++d) {
            py::ssize_t& extent = shape[skip + static_cast<std::size_t>(d)];
            if (input.shape(d) != 1 && extent != 1 && input.shape(d) != extent) {
                throw py::value_error("elementwise inputs do not broadcast together: shape " +
                                      attribute_text(input, "shape") + " against " +
                                      shape_text(shape));
            }
            extent = input.shape(d) != 1 ? input.shape(d) : extent;
        }
    }
    std::vector<nimbus::kernels::ElementwiseOperand> operands;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const py::array& input = inputs[i];
        nimbus::kernels::ElementwiseOperand operand;
        operand.data = input.data();
        operand.type = element_type(input, i);
        operand.strides.assign(ndim, 0);
        const std::size_t skip = ndim - static_cast<std::size_t>(input.ndim());
        for (py::ssize_t d = 0; d < input.ndim(); ++d) {
            if (input.shape(d) != 1) {
                if (input.strides(d) % input.itemsize() != 0) {
                    throw py::value_error("elementwise input " + std::to_string(i) +
                                          " has strides " + attribute_text(input, "strides") +
                                          " that are not whole elements");
                }
                operand.strides[skip + static_cast<std::size_t>(d)] =
                    input.strides(d) / input.itemsize();
            }
        }
        operands.push_back(std::move(operand));
    }
    py::array out = out_object.is_none() ? py::array(py::dtype::of<float>(), shape)
                                         : checked_array<float>(out_object, "out",
                                                                static_cast<py::ssize_t>(ndim),
                                                                "(the broadcast shape)");
    if (!std::equal(shape.begin(), shape.end(), out.shape()) || !out.writeable()) {
        throw py::value_error("out must be a writable array of shape " + shape_text(shape) +
                              ", got shape " + attribute_text(out, "shape"));
    }
    std::vector<std::size_t> extents(shape.begin(), shape.end());
    auto* out_data = static_cast<float*>(out.mutable_data());
    std::vector<py::object> keep(inputs.begin(), inputs.end());
    keep.push_back(out);
    return {[steps = program.steps, operands = std::move(operands), extents = std::move(extents),
             out_data](std::size_t threads) {
                nimbus::kernels::evaluate_elementwise(steps, operands, extents, out_data, {},
                                                      threads, nimbus::kernels::selected_isa());
            },
            out, std::move(keep)};
}

// The program over the concatenation of `parts` along channels, into out [N, H, W, C] (NHWC,
// C-contiguous float32, or a new one) without the concatenation: part i ([N, C_i, H, W]
// float32, any strides) as input 0, with its channels' share of `params` (inputs 1, 2, ...:
// constants of at most one value per channel, [1, C, 1, 1] or fewer dimensions) as the other
// inputs, into its channels of out.
PreparedCall prepare_elementwise_concat(const ElementwiseProgram& program,
                                        const py::list& part_objects,
                                        const py::list& param_objects,
                                        const py::object& out_object) {
    using nimbus::kernels::ElementwiseOperand;
    if (part_objects.empty()) {
        throw py::value_error("elementwise_concat needs at least one part");
    }
    if (1 + param_objects.size() < program.operands) {
        throw py::value_error("the elementwise program reads " + std::to_string(program.operands) +
                              " inputs, got a part and " + std::to_string(param_objects.size()) +
                              " params");
    }
    std::vector<py::array> parts;
    py::ssize_t channels = 0;
    for (const auto& object : part_objects) {
        const auto part = py::reinterpret_borrow<py::object>(object);
        if (!py::isinstance<py::array>(part) ||
            !py::reinterpret_borrow<py::array>(part).dtype().equal(py::dtype::of<float>()) ||
            py::reinterpret_borrow<py::array>(part).ndim() != 4) {
            throw py::type_error(
                "elementwise_concat parts must be 4-D float32 arrays [N, C, H, W]");
        }
        parts.push_back(py::reinterpret_borrow<py::array>(part));
        const py::array& first = parts.front();
        const py::array& last = parts.back();
        if (last.shape(0) != first.shape(0) || last.shape(2) != first.shape(2) ||
            last.shape(3) != first.shape(3)) {
            throw py::value_error("elementwise_concat parts must share N, H and W: shape " +
                                  attribute_text(last, "shape") + " against " +
                                  attribute_text(first, "shape"));
        }
        for (py::ssize_t d = 0; d < 4; ++d) {
            if (last.strides(d) % static_cast<py::ssize_t>(sizeof(float)) != 0) {
                throw py::value_error("elementwise_concat part strides must be whole elements, "
                                      "got " + attribute_text(last, "strides"));
            }
        }
        channels += last.shape(1);
    }
    const py::array& first = parts.front();
    const std::vector<py::ssize_t> shape{first.shape(0), first.shape(2), first.shape(3), channels};
    // Each param, its element type and its stride along channels (0 for one value), in elements.
    struct ChannelParam {
        py::array array;
        nimbus::kernels::ElementType type;
        py::ssize_t stride;
    };
    std::vector<ChannelParam> params;
    for (std::size_t i = 0; i < param_objects.size(); ++i) {
        const py::array param = py::array::ensure(param_objects[i]);
        if (!param) {
            throw py::type_error("elementwise_concat params must be arrays");
        }
        const auto type = element_type(param, i + 1);
        const py::ssize_t ndim = param.ndim();
        bool per_channel = ndim <= 4;
        for (py::ssize_t d = 0; d < ndim && per_channel; ++d) {
            const bool channel_axis = d == ndim - 3;
            per_channel = param.shape(d) == 1 || (channel_axis && param.shape(d) == channels);
        }
        if (!per_channel) {
            throw py::value_error("elementwise_concat param " + std::to_string(i) +
                                  " must hold one value or one per channel ([1, " +
                                  std::to_string(channels) + ", 1, 1]), got shape " +
                                  attribute_text(param, "shape"));
        }
        const bool varies = ndim >= 3 && param.shape(ndim - 3) > 1;
        params.push_back({param, type, varies ? param.strides(ndim - 3) / param.itemsize() : 0});
    }
    py::array out = out_object.is_none()
                        ? py::array(py::dtype::of<float>(), shape)
                        : checked_array<float>(out_object, "out", 4, "[N, H, W, C]");
    if (!std::equal(shape.begin(), shape.end(), out.shape()) || !out.writeable()) {
        throw py::value_error("out must be a writable array of shape " + shape_text(shape) +
                              ", got shape " + attribute_text(out, "shape"));
    }
    // One call per part: its operands seen through [N, H, W, C_i], and its channels of out.
    struct PartCall {
        std::vector<ElementwiseOperand> operands;
        std::vector<std::size_t> shape;
        std::size_t first_channel;
    };
    std::vector<PartCall> calls;
    std::size_t first_channel = 0;
    for (const py::array& part : parts) {
        PartCall call;
        ElementwiseOperand x;
        x.data = part.data();
        for (const py::ssize_t d : {0, 2, 3, 1}) {  // NCHW strides in NHWC order
            x.strides.push_back(part.shape(d) == 1 ? 0 : part.strides(d) / 4);
        }
        call.operands.push_back(std::move(x));
        for (const ChannelParam& param : params) {
            ElementwiseOperand operand;
            operand.data = static_cast<const char*>(param.array.data()) +
                           static_cast<py::ssize_t>(first_channel) * param.stride *
                               param.array.itemsize();
            operand.type = param.type;
            operand.strides = {0, 0, 0, param.stride};
            call.operands.push_back(std::move(operand));
        }
        for (const py::ssize_t d : {0, 2, 3, 1}) {  // [N, H, W, C_i]
            call.shape.push_back(static_cast<std::size_t>(part.shape(d)));
        }
        call.first_channel = first_channel;
        first_channel += call.shape[3];
        calls.push_back(std::move(call));
    }
    const auto c = static_cast<std::ptrdiff_t>(channels);
    const std::vector<std::ptrdiff_t> out_strides{
        static_cast<std::ptrdiff_t>(shape[1] * shape[2]) * c,
        static_cast<std::ptrdiff_t>(shape[2]) * c, c, 1};
    auto* out_data = static_cast<float*>(out.mutable_data());
    std::vector<py::object> keep(parts.begin(), parts.end());
    for (const auto& param : params) {
        keep.push_back(param.array);
    }
    keep.push_back(out);
    // Many small parts (DenseNet's later blocks: up to 48 of 32 channels over 14 x 14 or 7 x 7),
    // each below what evaluate_elementwise splits over threads, go to the threads whole.
    const bool parts_in_parallel =
        calls.size() >= 4 && static_cast<std::size_t>(out.size()) / calls.size() < 16384;
    return {[steps = program.steps, calls = std::move(calls), out_strides, out_data,
             parts_in_parallel](std::size_t threads) {
                const auto run = [&](const PartCall& call, std::size_t part_threads) {
                    nimbus::kernels::evaluate_elementwise(
                        steps, call.operands, call.shape, out_data + call.first_channel,
                        out_strides, part_threads, nimbus::kernels::selected_isa());
                };
                if (parts_in_parallel) {
                    nimbus::kernels::parallel_for(calls.size(), threads, [&](std::size_t part) {
                        run(calls[part], 1);
                    });
                    return;
                }
                for (const PartCall& call : calls) {
                    run(call, threads);
                }
            },
            out, std::move(keep)};
}

// The epilogue of a float kernel whose result has `shape` and `channels` output channels,
// once bias [channels] and residual (of the result's shape) are checked. It points into
// `bias` and `residual`, which the caller keeps alive.
SgemmEpilogue float_epilogue(const py::object& bias_object, const py::object& residual_object,
                             const std::string& activation,
                             const std::vector<py::ssize_t>& shape, const std::string& dims,
                             py::array& bias, py::array& residual) {
    SgemmEpilogue epilogue;
    epilogue.activation = nimbus::kernels::activation_from_name(activation);
    const py::ssize_t channels = shape.back();
    if (!bias_object.is_none()) {
        bias = checked_vector<float>(bias_object, "bias", channels);
        epilogue.bias = static_cast<const float*>(bias.data());
    }
    if (!residual_object.is_none()) {
        const auto ndim = static_cast<py::ssize_t>(shape.size());
        residual = checked_array<float>(residual_object, "residual", ndim, dims);
        if (!std::equal(shape.begin(), shape.end(), residual.shape())) {
            throw py::value_error("residual must have the shape of the result " +
                                  shape_text(shape) + ", got shape " +
                                  attribute_text(residual, "shape"));
        }
        epilogue.residual = static_cast<const float*>(residual.data());
        epilogue.residual_stride = static_cast<std::size_t>(channels);
    }
    return epilogue;
}

// `out_object` checked like result_array, and sharing no memory with the residual either,
// which the kernels read after they have stored partial sums into `out`.
template <typename Element>
py::array float_result(const py::object& out_object, const std::vector<py::ssize_t>& shape,
                       const std::string& dims, const py::array& x, const py::array& residual) {
    py::array out = result_array<Element>(out_object, shape, dims, x, "x");
    if (!out_object.is_none() && residual) {
        const auto* out_begin = static_cast<const char*>(out.data());
        const auto* residual_begin = static_cast<const char*>(residual.data());
        if (out_begin < residual_begin + residual.nbytes() &&
            residual_begin < out_begin + out.nbytes()) {
            throw py::value_error("out must not share memory with residual");
        }
    }
    return out;
}

PreparedCall prepare_sgemm(const py::object& x_object, const PackedSgemmWeights& packed,
                           const py::object& bias_object, const py::object& residual_object,
                           const std::string& activation, const py::object& out_object) {
    const py::array x = checked_matrix<float>(x_object, "x", "[M, K]");
    if (static_cast<std::size_t>(x.shape(1)) != packed.k) {
        throw py::value_error("x must have shape [M, K] with K = " + std::to_string(packed.k) +
                              " (the depth of the packed weights), got shape " +
                              attribute_text(x, "shape"));
    }
    const std::vector<py::ssize_t> shape{x.shape(0), static_cast<py::ssize_t>(packed.n)};
    py::array bias;
    py::array residual;
    const SgemmEpilogue epilogue =
        float_epilogue(bias_object, residual_object, activation, shape, "[M, N]", bias, residual);
    py::array out = float_result<float>(out_object, shape, "[M, N]", x, residual);
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto rows = static_cast<std::size_t>(shape[0]);
    const PackedSgemmWeights* weights = &packed;
    return {[=](std::size_t threads) {
                nimbus::kernels::sgemm(x_data, rows, *weights, epilogue, out_data, threads);
            },
            out,
            {x, owner_of(packed), bias, residual, out}};
}

py::array sgemm(const py::object& x_object, const PackedSgemmWeights& packed,
                const py::object& bias_object, const py::object& residual_object,
                const std::string& activation, long long threads, const py::object& out_object) {
    return run_now(prepare_sgemm(x_object, packed, bias_object, residual_object,
                                 activation, out_object),
                   threads);
}

PackedSconvWeights pack_sconv_weights(const py::object& w_object, long long groups,
                                      const std::optional<std::string>& isa, bool unit_stride) {
    const py::array w = checked_array<float>(w_object, "w", 4, "[O, I / groups, KH, KW]");
    const auto out_channels = static_cast<long long>(w.shape(0));
    if (groups < 1 || out_channels % groups != 0) {
        throw py::value_error("groups must be a positive divisor of the " +
                              std::to_string(out_channels) + " output channels, got " +
                              std::to_string(groups));
    }
    require_in_range("kernel height", w.shape(2), 1, kMaxGeometryValue, "the range");
    require_in_range("kernel width", w.shape(3), 1, kMaxGeometryValue, "the range");
    require_in_range("input channels per group", w.shape(1), 1, kMaxGeometryValue, "the range");
    const Isa path = requested_isa(isa);
    const auto* data = static_cast<const float*>(w.data());
    py::gil_scoped_release release;
    return nimbus::kernels::pack_sconv_weights(
        data, static_cast<std::size_t>(out_channels), static_cast<std::size_t>(w.shape(1)),
        static_cast<std::size_t>(w.shape(2)), static_cast<std::size_t>(w.shape(3)),
        static_cast<std::size_t>(groups), path, unit_stride);
}

// The geometry of float x [N, H, W, C] under the packed float weights, checked.
ConvGeometry checked_sconv_geometry(const py::array& x, const PackedSconvWeights& packed,
                                    const std::vector<long long>& stride,
                                    const std::vector<long long>& padding,
                                    const std::vector<long long>& dilation) {
    // checked_geometry reads only the shape of the weights.
    PackedConvWeights shape_only;
    shape_only.out_channels = packed.out_channels;
    shape_only.group_channels = packed.group_channels;
    shape_only.kernel_h = packed.kernel_h;
    shape_only.kernel_w = packed.kernel_w;
    shape_only.groups = packed.groups;
    const ConvGeometry geometry = checked_geometry(x, shape_only, stride, padding, dilation);
    if (packed.unit_stride_only &&
        (geometry.stride_h != 1 || geometry.stride_w != 1 || geometry.dilation_h != 1 ||
         geometry.dilation_w != 1)) {
        throw py::value_error("these weights were packed for stride 1 and dilation 1 only "
                              "(unit_stride=True)");
    }
    return geometry;
}

PreparedCall prepare_sconv2d(const py::object& x_object, const PackedSconvWeights& packed,
                             const py::object& bias_object, const py::object& residual_object,
                             const std::string& activation, const std::vector<long long>& stride,
                             const std::vector<long long>& padding,
                             const std::vector<long long>& dilation,
                             const py::object& out_object) {
    const py::array x = checked_array<float>(x_object, "x", 4, "[N, H, W, C]");
    const ConvGeometry geometry = checked_sconv_geometry(x, packed, stride, padding, dilation);
    const std::vector<py::ssize_t> shape{x.shape(0), static_cast<py::ssize_t>(geometry.out_h),
                                         static_cast<py::ssize_t>(geometry.out_w),
                                         static_cast<py::ssize_t>(packed.out_channels)};
    require_fits<float>(shape);
    py::array bias;
    py::array residual;
    const SgemmEpilogue epilogue = float_epilogue(bias_object, residual_object, activation, shape,
                                                  "[N, OH, OW, O]", bias, residual);
    py::array out = float_result<float>(out_object, shape, "[N, OH, OW, O]", x, residual);
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const PackedSconvWeights* weights = &packed;
    return {[=](std::size_t threads) {
                nimbus::kernels::sconv2d(x_data, geometry, *weights, epilogue, out_data, threads);
            },
            out,
            {x, owner_of(packed), bias, residual, out}};
}

// A float convolution without a residual and the max pooling of its result, in one call
// (conv_pool.cpp): out [N, POH, POW, O].
PreparedCall prepare_sconv2d_max_pool2d(
    const py::object& x_object, const PackedSconvWeights& packed, const py::object& bias_object,
    const std::string& activation, const std::vector<long long>& stride,
    const std::vector<long long>& padding, const std::vector<long long>& dilation,
    const std::vector<long long>& pool_kernel, const std::vector<long long>& pool_stride,
    const std::vector<long long>& pool_padding, const std::vector<long long>& pool_dilation,
    const std::vector<long long>& pool_out_hw, const py::object& out_object) {
    const py::array x = checked_array<float>(x_object, "x", 4, "[N, H, W, C]");
    const ConvGeometry g = checked_sconv_geometry(x, packed, stride, padding, dilation);
    if (!packed.winograd_weights.empty()) {
        throw py::value_error("weights packed in the Winograd form do not run in bands (its "
                              "tiles would start on other rows)");
    }
    const PoolGeometry pool = checked_result_pooling(g, packed.out_channels, pool_kernel,
                                                     pool_stride, pool_padding, pool_dilation,
                                                     pool_out_hw);
    require_bands(g, packed.kernel_h, pool);
    const auto channels = static_cast<py::ssize_t>(packed.out_channels);
    py::array bias;
    py::array no_residual;
    const SgemmEpilogue epilogue = float_epilogue(
        bias_object, py::none(), activation,
        {x.shape(0), static_cast<py::ssize_t>(g.out_h), static_cast<py::ssize_t>(g.out_w),
         channels},
        "[N, OH, OW, O]", bias, no_residual);
    const std::vector<py::ssize_t> shape{x.shape(0), pool_out_hw[0], pool_out_hw[1], channels};
    require_fits<float>(shape);
    py::array out = float_result<float>(out_object, shape, "[N, POH, POW, O]", x, no_residual);
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const PackedSconvWeights* weights = &packed;
    return {[=](std::size_t threads) {
                nimbus::kernels::sconv2d_max_pool2d(x_data, g, *weights, epilogue, pool,
                                                    out_data, threads);
            },
            out,
            {x, owner_of(packed), bias, out}};
}

py::array sconv2d(const py::object& x_object, const PackedSconvWeights& packed,
                  const py::object& bias_object, const py::object& residual_object,
                  const std::string& activation, const std::vector<long long>& stride,
                  const std::vector<long long>& padding, const std::vector<long long>& dilation,
                  long long threads, const py::object& out_object) {
    return run_now(prepare_sconv2d(x_object, packed, bias_object, residual_object, activation,
                                   stride, padding, dilation, out_object),
                   threads);
}


// `packed` as a 1x1 convolution of one group from `inputs` channels, for `role` of a block.
void require_pointwise(const PackedSconvWeights& packed, std::size_t inputs,
                       const std::string& role) {
    if (packed.kernel_h != 1 || packed.kernel_w != 1 || packed.groups != 1 ||
        packed.group_channels != inputs) {
        throw py::value_error(role + " must be 1x1 weights of one group over " +
                              std::to_string(inputs) + " channels");
    }
}

// `expand` null: a block without expansion (its bias must be None and its activation none).
PreparedCall prepare_inverted_residual(
    const py::object& x_object, const PackedSconvWeights* expand, const py::object& expand_bias,
    const std::string& expand_activation, const PackedSconvWeights& depthwise,
    const py::object& depthwise_bias, const std::string& depthwise_activation,
    const std::vector<long long>& stride, const std::vector<long long>& padding,
    const std::vector<long long>& dilation, const PackedSconvWeights& project,
    const py::object& project_bias, const std::string& project_activation,
    const py::object& residual_object, const py::object& out_object) {
    const py::array x = checked_array<float>(x_object, "x", 4, "[N, H, W, C]");
    const auto inputs = static_cast<std::size_t>(x.shape(3));
    if (expand != nullptr) {
        require_pointwise(*expand, inputs, "expand");
    } else if (!expand_bias.is_none() || expand_activation != "none") {
        throw py::value_error("a block without expand weights takes no expand bias or "
                              "activation");
    }
    const std::size_t expanded = expand != nullptr ? expand->out_channels : inputs;
    if (!depthwise.depthwise || depthwise.out_channels != expanded) {
        throw py::value_error("depthwise must be depthwise weights over the " +
                              std::to_string(expanded) + " expanded channels");
    }
    require_pointwise(project, expanded, "project");
    PackedConvWeights shape_only;  // checked_geometry reads only the shape of the weights
    shape_only.out_channels = expanded;
    shape_only.group_channels = 1;
    shape_only.kernel_h = depthwise.kernel_h;
    shape_only.kernel_w = depthwise.kernel_w;
    shape_only.groups = expanded;
    const std::vector<py::ssize_t> expanded_shape{x.shape(0), x.shape(1), x.shape(2),
                                                  static_cast<py::ssize_t>(expanded)};
    InvertedResidual block;
    block.depthwise_geometry =
        checked_geometry(x, expanded_shape, shape_only, stride, padding, dilation);
    const ConvGeometry& g = block.depthwise_geometry;
    const std::vector<py::ssize_t> shape{x.shape(0), static_cast<py::ssize_t>(g.out_h),
                                         static_cast<py::ssize_t>(g.out_w),
                                         static_cast<py::ssize_t>(project.out_channels)};
    py::array biases[3];
    py::array residual;
    py::array none;
    block.expand = expand;
    block.expand_epilogue = float_epilogue(expand_bias, py::none(), expand_activation,
                                           expanded_shape, "", biases[0], none);
    block.depthwise = &depthwise;
    block.depthwise_epilogue = float_epilogue(depthwise_bias, py::none(), depthwise_activation,
                                              expanded_shape, "", biases[1], none);
    block.project = &project;
    block.project_epilogue = float_epilogue(project_bias, residual_object, project_activation,
                                            shape, "[N, OH, OW, O]", biases[2], residual);
    py::array out = float_result<float>(out_object, shape, "[N, OH, OW, O]", x, residual);
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    return {[=](std::size_t threads) {
                nimbus::kernels::inverted_residual(x_data, block, out_data, threads);
            },
            out,
            {x, expand != nullptr ? owner_of(*expand) : py::object(), owner_of(depthwise),
             owner_of(project), biases[0],
             biases[1], biases[2], residual, out}};
}

py::array inverted_residual(const py::object& x_object, const PackedSconvWeights* expand,
                            const py::object& expand_bias, const std::string& expand_activation,
                            const PackedSconvWeights& depthwise,
                            const py::object& depthwise_bias,
                            const std::string& depthwise_activation,
                            const std::vector<long long>& stride,
                            const std::vector<long long>& padding,
                            const std::vector<long long>& dilation,
                            const PackedSconvWeights& project, const py::object& project_bias,
                            const std::string& project_activation,
                            const py::object& residual_object, long long threads) {
    return run_now(prepare_inverted_residual(x_object, expand, expand_bias, expand_activation,
                                             depthwise, depthwise_bias, depthwise_activation,
                                             stride, padding, dilation, project, project_bias,
                                             project_activation, residual_object, py::none()),
                   threads);
}

// ---- float32 attention and row normalizations ----------------------------------------------

// `object` as a C-contiguous float32 array of at least `min_ndim` dimensions, no copy.
py::array checked_float_array(const py::object& object, const std::string& name,
                              py::ssize_t min_ndim, const std::string& dims) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    const auto ndim = std::max(py::reinterpret_borrow<py::array>(object).ndim(), min_ndim);
    return checked_array<float>(object, name, ndim, dims);
}

// Element offsets of the matrices of an array, in C order of the batch index, from the sizes of
// its batch dimensions (those before the last two) and their element strides (0 broadcasts).
std::vector<std::size_t> batch_offsets(const std::vector<py::ssize_t>& sizes,
                                       const std::vector<std::size_t>& strides) {
    std::size_t batch = 1;
    for (const py::ssize_t size : sizes) {
        batch *= static_cast<std::size_t>(size);
    }
    std::vector<std::size_t> offsets(batch, 0);
    for (std::size_t b = 0; b < batch; ++b) {
        std::size_t rest = b;
        for (std::size_t axis = sizes.size(); axis-- > 0;) {
            const auto size = static_cast<std::size_t>(sizes[axis]);
            offsets[b] += rest % size * strides[axis];
            rest /= size;
        }
    }
    return offsets;
}

// The layout of `array` [..., rows, columns] of `ndim` dimensions that a kernel reads or writes
// in place: rows contiguous, every other stride a non-negative whole number of elements. Its
// layout points into `offsets`.
nimbus::kernels::MatrixLayout strided_layout(const py::array& array, const std::string& name,
                                             py::ssize_t ndim, const std::string& dims,
                                             std::vector<std::size_t>& offsets) {
    if (array.ndim() != ndim) {
        throw py::value_error(name + " must be " + std::to_string(ndim) + "-D " + dims + ", got " +
                              std::to_string(array.ndim()) + "-D shape " +
                              attribute_text(array, "shape"));
    }
    const py::ssize_t element = array.itemsize();
    std::vector<std::size_t> strides(static_cast<std::size_t>(ndim));
    for (py::ssize_t axis = 0; axis < ndim; ++axis) {
        const py::ssize_t stride = array.strides(axis);
        const bool contiguous_rows = axis != ndim - 1 || stride == element || array.shape(axis) <= 1;
        if (stride < 0 || stride % element != 0 || !contiguous_rows) {
            throw py::value_error(name + " must have contiguous rows and non-negative strides, got "
                                  "strides " + attribute_text(array, "strides") + "; pass "
                                  "numpy.ascontiguousarray(" + name + ")");
        }
        strides[static_cast<std::size_t>(axis)] = static_cast<std::size_t>(stride / element);
    }
    const std::vector<py::ssize_t> sizes(array.shape(), array.shape() + ndim - 2);
    offsets = batch_offsets(sizes, strides);
    return {offsets.data(), strides[static_cast<std::size_t>(ndim - 2)]};
}

// strided_layout for a float32 array (views of transposed or broadcast batches included).
nimbus::kernels::MatrixLayout strided_matrices(const py::object& object, const std::string& name,
                                               py::ssize_t ndim, const std::string& dims,
                                               py::array& array,
                                               std::vector<std::size_t>& offsets) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    array = py::reinterpret_borrow<py::array>(object);
    if (!array.dtype().equal(py::dtype::of<float>())) {
        throw py::type_error(name + " must have dtype float32, got " +
                             std::string(py::str(array.dtype())));
    }
    return strided_layout(array, name, ndim, dims, offsets);
}

// strided_matrices for a uint8 or int8 array (strides in bytes); sets `is_signed`.
nimbus::kernels::MatrixLayout strided_int8_matrices(const py::object& object,
                                                    const std::string& name, py::ssize_t ndim,
                                                    const std::string& dims, py::array& array,
                                                    std::vector<std::size_t>& offsets,
                                                    bool& is_signed) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error(name + " must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    array = py::reinterpret_borrow<py::array>(object);
    is_signed = array.dtype().equal(py::dtype::of<std::int8_t>());
    if (!is_signed && !array.dtype().equal(py::dtype::of<std::uint8_t>())) {
        throw py::type_error(name + " must have dtype uint8 or int8, got " +
                             std::string(py::str(array.dtype())));
    }
    return strided_layout(array, name, ndim, dims, offsets);
}

// The mask of attention() broadcast to scores [batch dims..., L, S] through strides: bool or
// float32, C-contiguous, each dimension (aligned from the right) 1 or the scores'. Fills
// `offsets` with the mask offset of each flattened batch index.
nimbus::kernels::AttentionMask checked_mask(const py::object& mask_object,
                                            const std::vector<py::ssize_t>& scores,
                                            std::vector<std::size_t>& offsets,
                                            py::array& mask) {
    nimbus::kernels::AttentionMask result;
    if (mask_object.is_none()) {
        return result;
    }
    if (!py::isinstance<py::array>(mask_object)) {
        throw py::type_error("mask must be a numpy.ndarray or None, got " +
                             std::string(Py_TYPE(mask_object.ptr())->tp_name));
    }
    mask = py::reinterpret_borrow<py::array>(mask_object);
    if (mask.dtype().equal(py::dtype::of<bool>())) {
        result.kind = nimbus::kernels::MaskKind::boolean;
    } else if (mask.dtype().equal(py::dtype::of<float>())) {
        result.kind = nimbus::kernels::MaskKind::additive;
    } else {
        throw py::type_error("mask must have dtype bool or float32, got " +
                             std::string(py::str(mask.dtype())));
    }
    const auto ndim = static_cast<py::ssize_t>(scores.size());
    if (mask.ndim() > ndim) {
        throw py::value_error("mask " + attribute_text(mask, "shape") +
                              " does not broadcast to the scores " + shape_text(scores));
    }
    if (!(mask.flags() & py::array::c_style)) {
        throw py::value_error("mask must be C-contiguous; pass numpy.ascontiguousarray(mask)");
    }
    // Element strides of the mask aligned with the scores' dimensions; 0 where it broadcasts.
    std::vector<std::size_t> strides(scores.size(), 0);
    std::size_t stride = 1;
    for (py::ssize_t axis = mask.ndim() - 1; axis >= 0; --axis) {
        const py::ssize_t size = mask.shape(axis);
        const auto target = static_cast<std::size_t>(ndim - mask.ndim() + axis);
        if (size != 1 && size != scores[target]) {
            throw py::value_error("mask " + attribute_text(mask, "shape") +
                                  " does not broadcast to the scores " + shape_text(scores));
        }
        strides[target] = size == 1 ? 0 : stride;
        stride *= static_cast<std::size_t>(size);
    }
    result.data = mask.data();
    result.row_stride = strides[ndim - 2];
    result.column_stride = strides[ndim - 1];
    offsets = batch_offsets({scores.begin(), scores.end() - 2}, strides);
    result.batch_offsets = offsets.data();
    return result;
}

// The offsets that attention's layouts point into, owned by its prepared call.
struct AttentionOffsets {
    std::vector<std::size_t> q, k, v, out, mask;
};

// The checked operands of attention() or qattention(): q, k and v float32, or (integer) each
// uint8 or int8; the result float32.
struct AttentionOperands {
    py::array q, k, v, mask, out;
    nimbus::kernels::MatrixLayout q_layout, k_layout, v_layout, out_layout;
    bool q_signed = false, k_signed = false, v_signed = false;
    nimbus::kernels::AttentionMask mask_view;
    nimbus::kernels::AttentionShape dims{};
    std::shared_ptr<AttentionOffsets> offsets = std::make_shared<AttentionOffsets>();
};

AttentionOperands checked_attention(const py::object& q_object, const py::object& k_object,
                                    const py::object& v_object, const py::object& mask_object,
                                    const py::object& out_object, bool integer) {
    if (!py::isinstance<py::array>(q_object)) {
        throw py::type_error("q must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(q_object.ptr())->tp_name));
    }
    const py::ssize_t ndim =
        std::max<py::ssize_t>(py::reinterpret_borrow<py::array>(q_object).ndim(), 2);
    AttentionOperands call;
    AttentionOffsets& offsets = *call.offsets;
    const auto operand = [&](const py::object& object, const char* name, const char* dims,
                             py::array& array, std::vector<std::size_t>& offsets_of,
                             bool& is_signed) {
        return integer ? strided_int8_matrices(object, name, ndim, dims, array, offsets_of,
                                               is_signed)
                       : strided_matrices(object, name, ndim, dims, array, offsets_of);
    };
    call.q_layout = operand(q_object, "q", "[..., L, D]", call.q, offsets.q, call.q_signed);
    call.k_layout = operand(k_object, "k", "[..., S, D] like q", call.k, offsets.k, call.k_signed);
    call.v_layout = operand(v_object, "v", "[..., S, Dv] like q", call.v, offsets.v, call.v_signed);
    const py::array& q = call.q;
    const py::array& k = call.k;
    const py::array& v = call.v;
    const py::ssize_t d = q.shape(ndim - 1);
    const py::ssize_t s = k.shape(ndim - 2);
    const bool same_batch = std::equal(q.shape(), q.shape() + ndim - 2, k.shape()) &&
                            std::equal(q.shape(), q.shape() + ndim - 2, v.shape());
    if (!same_batch || k.shape(ndim - 1) != d || v.shape(ndim - 2) != s) {
        throw py::value_error("q [..., L, D], k [..., S, D] and v [..., S, Dv] must share their "
                              "batch dimensions, D and S; got shapes " +
                              attribute_text(q, "shape") + ", " + attribute_text(k, "shape") +
                              " and " + attribute_text(v, "shape"));
    }
    if (s == 0) {
        throw py::value_error("k and v must have at least one row (S >= 1): softmax over no "
                              "scores is undefined");
    }
    std::vector<py::ssize_t> scores = shape_of(q);
    scores.back() = s;
    call.mask_view = checked_mask(mask_object, scores, offsets.mask, call.mask);
    std::vector<py::ssize_t> shape = shape_of(q);
    shape.back() = v.shape(ndim - 1);
    call.out_layout = strided_matrices(
        out_object.is_none() ? py::array(py::dtype::of<float>(), shape) : out_object, "out", ndim,
        "[..., L, Dv]", call.out, offsets.out);
    const py::array& out = call.out;
    if (!std::equal(shape.begin(), shape.end(), out.shape()) || !out.writeable()) {
        throw py::value_error("out must be a writable array of shape " + shape_text(shape) +
                              ", got shape " + attribute_text(out, "shape"));
    }
    // Threads write whole rows of out at once: rows that overlap (a broadcast dimension, rows
    // closer than Dv) would race.
    for (py::ssize_t axis = 0; axis < ndim - 1; ++axis) {
        const bool overlaps = out.shape(axis) > 1 &&
                              (out.strides(axis) == 0 ||
                               (axis == ndim - 2 && out.strides(axis) < out.shape(ndim - 1) * 4));
        if (overlaps) {
            throw py::value_error("out must not overlap itself, got strides " +
                                  attribute_text(out, "strides") + " for shape " +
                                  attribute_text(out, "shape"));
        }
    }
    call.dims.batch = offsets.q.size();
    call.dims.l = static_cast<std::size_t>(q.shape(ndim - 2));
    call.dims.s = static_cast<std::size_t>(s);
    call.dims.d = static_cast<std::size_t>(d);
    call.dims.dv = static_cast<std::size_t>(shape.back());
    return call;
}

PreparedCall prepare_attention(const py::object& q_object, const py::object& k_object,
                               const py::object& v_object, const py::object& mask_object,
                               const std::optional<double>& scale,
                               const py::object& out_object) {
    AttentionOperands call =
        checked_attention(q_object, k_object, v_object, mask_object, out_object, false);
    // numpy's rounding: the scale in double, then float32.
    const auto scale_value =
        static_cast<float>(scale ? *scale : 1.0 / std::sqrt(double(call.dims.d)));
    const auto* q_data = static_cast<const float*>(call.q.data());
    const auto* k_data = static_cast<const float*>(call.k.data());
    const auto* v_data = static_cast<const float*>(call.v.data());
    auto* out_data = static_cast<float*>(call.out.mutable_data());
    // The call owns `offsets`, which the layouts and the mask point into.
    return {[=, offsets = call.offsets](std::size_t threads) {
                nimbus::kernels::attention(q_data, call.q_layout, k_data, call.k_layout, v_data,
                                           call.v_layout, call.mask_view, scale_value, call.dims,
                                           out_data, call.out_layout, threads,
                                           nimbus::kernels::selected_isa());
            },
            call.out,
            {call.q, call.k, call.v, call.mask, call.out}};
}

PreparedCall prepare_qattention(const py::object& q_object, const py::object& k_object,
                                const py::object& v_object, const py::object& mask_object,
                                const std::array<std::int32_t, 3>& zero_points,
                                double score_scale, double value_scale,
                                const py::object& out_object) {
    AttentionOperands call =
        checked_attention(q_object, k_object, v_object, mask_object, out_object, true);
    const auto quantized = [&](const py::array& array, const nimbus::kernels::MatrixLayout& layout,
                               bool is_signed, std::int32_t zero_point, const char* name) {
        const std::int32_t low = is_signed ? -128 : 0;
        if (zero_point < low || zero_point > low + 255) {
            throw py::value_error(std::string(name) + "'s zero point " +
                                  std::to_string(zero_point) + " is outside its dtype " +
                                  std::string(py::str(array.dtype())));
        }
        return nimbus::kernels::QuantizedMatrices{array.data(), layout, is_signed, zero_point};
    };
    const auto q = quantized(call.q, call.q_layout, call.q_signed, zero_points[0], "q");
    const auto k = quantized(call.k, call.k_layout, call.k_signed, zero_points[1], "k");
    const auto v = quantized(call.v, call.v_layout, call.v_signed, zero_points[2], "v");
    const auto scores = static_cast<float>(score_scale);
    const auto values = static_cast<float>(value_scale);
    auto* out_data = static_cast<float*>(call.out.mutable_data());
    return {[=, offsets = call.offsets](std::size_t threads) {
                nimbus::kernels::qattention(q, k, v, call.mask_view, scores, values, call.dims,
                                            out_data, call.out_layout, threads,
                                            nimbus::kernels::selected_isa());
            },
            call.out,
            {call.q, call.k, call.v, call.mask, call.out}};
}

py::array attention(const py::object& q_object, const py::object& k_object,
                    const py::object& v_object, const py::object& mask_object,
                    const std::optional<double>& scale, long long threads,
                    const py::object& out_object) {
    return run_now(prepare_attention(q_object, k_object, v_object, mask_object, scale,
                                     out_object),
                   threads);
}

py::array qattention(const py::object& q_object, const py::object& k_object,
                     const py::object& v_object, const py::object& mask_object,
                     const std::array<std::int32_t, 3>& zero_points, double score_scale,
                     double value_scale, long long threads, const py::object& out_object) {
    return run_now(prepare_qattention(q_object, k_object, v_object, mask_object, zero_points,
                                      score_scale, value_scale, out_object),
                   threads);
}

PreparedCall prepare_layer_norm(const py::object& x_object, const py::object& weight_object,
                                const py::object& bias_object, double eps,
                                const py::object& out_object) {
    const py::array x = checked_float_array(x_object, "x", 1, "[..., C]");
    const py::ssize_t channels = x.shape(x.ndim() - 1);
    py::array weight, bias;
    const float* weight_data = nullptr;
    const float* bias_data = nullptr;
    if (!weight_object.is_none()) {
        weight = checked_vector<float>(weight_object, "weight", channels);
        weight_data = static_cast<const float*>(weight.data());
    }
    if (!bias_object.is_none()) {
        bias = checked_vector<float>(bias_object, "bias", channels);
        bias_data = static_cast<const float*>(bias.data());
    }
    py::array out = result_array<float>(out_object, shape_of(x), "(x's shape)", x, "x");
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto c = static_cast<std::size_t>(channels);
    const std::size_t rows = c ? static_cast<std::size_t>(x.size()) / c : 0;
    const auto epsilon = static_cast<float>(eps);
    return {[=](std::size_t threads) {
                nimbus::kernels::layer_norm(x_data, rows, c, weight_data, bias_data, epsilon,
                                            out_data, threads, nimbus::kernels::selected_isa());
            },
            out,
            {x, weight, bias, out}};
}

py::array layer_norm(const py::object& x_object, const py::object& weight_object,
                     const py::object& bias_object, double eps, long long threads) {
    return run_now(prepare_layer_norm(x_object, weight_object, bias_object, eps, py::none()),
                   threads);
}

PreparedCall prepare_softmax(const py::object& x_object, long long axis,
                             const py::object& out_object) {
    const py::array x = checked_float_array(x_object, "x", 1, "[..., C]");
    if (axis != -1 && axis != x.ndim() - 1) {
        throw py::value_error("softmax runs over the last axis only (-1 or " +
                              std::to_string(x.ndim() - 1) + "), got axis " +
                              std::to_string(axis));
    }
    py::array out = result_array<float>(out_object, shape_of(x), "(x's shape)", x, "x");
    const auto* x_data = static_cast<const float*>(x.data());
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto channels = static_cast<std::size_t>(x.shape(x.ndim() - 1));
    const std::size_t rows = channels ? static_cast<std::size_t>(x.size()) / channels : 0;
    return {[=](std::size_t threads) {
                nimbus::kernels::softmax(x_data, rows, channels, out_data, threads,
                                         nimbus::kernels::selected_isa());
            },
            out,
            {x, out}};
}

py::array softmax(const py::object& x_object, long long axis, long long threads) {
    return run_now(prepare_softmax(x_object, axis, py::none()), threads);
}

std::vector<std::string> available_isa_names() {
    std::vector<std::string> names;
    for (const Isa isa : nimbus::kernels::available_isas()) {
        names.emplace_back(nimbus::kernels::isa_name(isa));
    }
    return names;
}

}  // namespace

// The optional arguments that every packed GEMM shares, for their docstrings. No binding makes
// them keyword-only: the runtime passes every argument by position, since a keyword argument
// costs a pybind11 call about 2 us, as long as a small layer's arithmetic.
#define NIMBUS_THREADS_AND_OUT_DOC \
    "threads: at most this many threads; out: a C-contiguous [M, N] array to write and return."

// The optional residual of the u8/s8 and f32 kernels, for their docstrings.
#define NIMBUS_RESIDUAL_DOC                                                                      \
    "t = f32(residual - residual_zero_point) * residual_scale for a u8/s8 residual of the "     \
    "result's shape\n(one group for convolutions), else 0.\n"

// The optional arguments that every convolution shares, for their docstrings.
#define NIMBUS_CONV_KEYWORDS_DOC                                                                 \
    "stride: (h, w); padding: [top, left, bottom, right], filled with a_zero_point; dilation: "  \
    "(h, w);\nthreads: at most this many threads; out: a C-contiguous [N, OH, OW, O] array to "   \
    "write and return."

// ---- quantize / dequantize ------------------------------------------------------------------

// "u8" -> true, "s8" -> false; the zero point must lie in the type's range.
bool checked_integer_type(const std::string& dtype, long long zero_point) {
    if (dtype != "u8" && dtype != "s8") {
        throw py::value_error("dtype must be 'u8' or 's8', got '" + dtype + "'");
    }
    const bool is_unsigned = dtype == "u8";
    require_in_range("zero_point", zero_point, is_unsigned ? 0 : -128, is_unsigned ? 255 : 127,
                     "the range of " + dtype);
    return is_unsigned;
}

float checked_scale(double scale) {
    const auto single = static_cast<float>(scale);
    if (!(single > 0.0f) || !std::isfinite(single)) {
        throw py::value_error("scale must be a positive finite float32, got " + std::to_string(scale));
    }
    return single;
}

PreparedCall prepare_quantize(const py::object& x_object, double scale, long long zero_point,
                              const std::string& dtype, bool channels_last,
                              const py::object& out_object) {
    const py::array x = checked_float_array(x_object, "x", 0, "any shape");
    if (channels_last && x.ndim() != 4) {
        throw py::value_error("channels_last needs x as NCHW [N, C, H, W], got shape " +
                              attribute_text(x, "shape"));
    }
    const bool is_unsigned = checked_integer_type(dtype, zero_point);
    const float single_scale = checked_scale(scale);
    std::vector<py::ssize_t> shape = shape_of(x);
    if (channels_last) {
        shape = {x.shape(0), x.shape(2), x.shape(3), x.shape(1)};
    }
    const std::string dims = channels_last ? "[N, H, W, C]" : "(x's shape)";
    py::array out = is_unsigned ? result_array<std::uint8_t>(out_object, shape, dims, x, "x")
                                : result_array<std::int8_t>(out_object, shape, dims, x, "x");
    const auto* x_data = static_cast<const float*>(x.data());
    void* out_data = out.mutable_data();
    const auto count = static_cast<std::size_t>(x.size());
    const auto zp = static_cast<std::int32_t>(zero_point);
    return {[=](std::size_t threads) {
                if (channels_last) {
                    nimbus::kernels::quantize_to_channels_last(
                        x_data, static_cast<std::size_t>(shape[0]),
                        static_cast<std::size_t>(shape[3]),
                        static_cast<std::size_t>(shape[1] * shape[2]), single_scale, zp,
                        is_unsigned, out_data, threads);
                } else {
                    nimbus::kernels::quantize(x_data, count, single_scale, zp, is_unsigned,
                                              out_data, threads);
                }
            },
            out,
            {x, out}};
}

py::array quantize(const py::object& x_object, double scale, long long zero_point,
                   const std::string& dtype, bool channels_last, long long threads) {
    return run_now(prepare_quantize(x_object, scale, zero_point, dtype, channels_last,
                                    py::none()),
                   threads);
}

// `object` as a C-contiguous uint8 or int8 array of at least `min_ndim` dimensions, no copy;
// `is_unsigned` says which.
py::array checked_quantized_array(const py::object& object, py::ssize_t min_ndim,
                                  const std::string& dims, bool& is_unsigned) {
    if (!py::isinstance<py::array>(object)) {
        throw py::type_error("q must be a numpy.ndarray, got " +
                             std::string(Py_TYPE(object.ptr())->tp_name));
    }
    const auto any = py::reinterpret_borrow<py::array>(object);
    is_unsigned = any.dtype().equal(py::dtype::of<std::uint8_t>());
    const py::ssize_t ndim = std::max(any.ndim(), min_ndim);
    return is_unsigned ? checked_array<std::uint8_t>(object, "q", ndim, dims)
                       : checked_array<std::int8_t>(object, "q", ndim, dims);
}

PreparedCall prepare_dequantize(const py::object& q_object, double scale, long long zero_point,
                                const py::object& out_object) {
    bool is_unsigned = false;
    const py::array q = checked_quantized_array(q_object, 0, "any shape", is_unsigned);
    checked_integer_type(is_unsigned ? "u8" : "s8", zero_point);
    const float single_scale = checked_scale(scale);
    py::array out = result_array<float>(out_object, shape_of(q), "(q's shape)", q, "q");
    const void* q_data = q.data();
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto count = static_cast<std::size_t>(q.size());
    const auto zp = static_cast<std::int32_t>(zero_point);
    return {[=](std::size_t threads) {
                nimbus::kernels::dequantize(q_data, is_unsigned, count, single_scale, zp,
                                            out_data, threads);
            },
            out,
            {q, out}};
}

py::array dequantize(const py::object& q_object, double scale, long long zero_point,
                     long long threads) {
    return run_now(prepare_dequantize(q_object, scale, zero_point, py::none()), threads);
}

PreparedCall prepare_dequantize_channels(const py::object& q_object,
                                         const py::object& scales_object,
                                         const py::object& zero_points_object,
                                         const py::object& out_object) {
    bool is_unsigned = false;
    const py::array q = checked_quantized_array(q_object, 1, "[..., C]", is_unsigned);
    const py::ssize_t channels = q.shape(q.ndim() - 1);
    const py::array scales = checked_vector<float>(scales_object, "scales", channels);
    const py::array zero_points =
        checked_vector<std::int32_t>(zero_points_object, "zero_points", channels);
    const auto* scale_data = static_cast<const float*>(scales.data());
    const auto* zero_data = static_cast<const std::int32_t*>(zero_points.data());
    // The message of checked_integer_type costs string work on every call: 35 us over the 768
    // channels of a BERT embedding, longer than the dequantization. Only a bad value gets it.
    const std::int32_t lowest = is_unsigned ? 0 : -128;
    const std::int32_t highest = is_unsigned ? 255 : 127;
    for (py::ssize_t c = 0; c < channels; ++c) {
        checked_scale(scale_data[c]);
        if (zero_data[c] < lowest || zero_data[c] > highest) {
            checked_integer_type(is_unsigned ? "u8" : "s8", zero_data[c]);
        }
    }
    py::array out = result_array<float>(out_object, shape_of(q), "(q's shape)", q, "q");
    const void* q_data = q.data();
    auto* out_data = static_cast<float*>(out.mutable_data());
    const auto rows = static_cast<std::size_t>(channels ? q.size() / channels : 0);
    return {[=](std::size_t threads) {
                nimbus::kernels::dequantize_channels(q_data, is_unsigned, rows,
                                                     static_cast<std::size_t>(channels),
                                                     scale_data, zero_data, out_data, threads);
            },
            out,
            {q, scales, zero_points, out}};
}

py::array dequantize_channels(const py::object& q_object, const py::object& scales_object,
                              const py::object& zero_points_object, long long threads) {
    return run_now(prepare_dequantize_channels(q_object, scales_object, zero_points_object,
                                               py::none()),
                   threads);
}

// ---- gather ------------------------------------------------------------------------------------

// out[i..., :] = table[indices[i...], :] (numpy.take along axis 0: negative indices count from
// the end) for a C-contiguous table of any dtype and C-contiguous int64 or int32 indices. An
// index outside [-rows, rows) raises IndexError when the call runs, before anything is copied.
PreparedCall prepare_gather_rows(const py::object& table_object, const py::object& indices_object,
                                 const py::object& out_object) {
    if (!py::isinstance<py::array>(table_object) || !py::isinstance<py::array>(indices_object)) {
        throw py::type_error("table and indices must be numpy.ndarrays");
    }
    const auto table = py::reinterpret_borrow<py::array>(table_object);
    const auto indices = py::reinterpret_borrow<py::array>(indices_object);
    if (table.ndim() < 1 || !(table.flags() & py::array::c_style)) {
        throw py::value_error("table must be a C-contiguous array of at least 1 dimension, got "
                              "shape " + attribute_text(table, "shape"));
    }
    const bool wide = indices.dtype().equal(py::dtype::of<std::int64_t>());
    if (!wide && !indices.dtype().equal(py::dtype::of<std::int32_t>())) {
        throw py::type_error("indices must have dtype int64 or int32, got " +
                             std::string(py::str(indices.dtype())));
    }
    if (!(indices.flags() & py::array::c_style)) {
        throw py::value_error("indices must be C-contiguous");
    }
    std::vector<py::ssize_t> shape = shape_of(indices);
    shape.insert(shape.end(), table.shape() + 1, table.shape() + table.ndim());
    py::array out;
    if (out_object.is_none()) {
        out = py::array(table.dtype(), shape);
    } else {
        if (!py::isinstance<py::array>(out_object)) {
            throw py::type_error("out must be a numpy.ndarray");
        }
        out = py::reinterpret_borrow<py::array>(out_object);
        if (!out.dtype().equal(table.dtype()) ||
            out.ndim() != static_cast<py::ssize_t>(shape.size()) ||
            !std::equal(shape.begin(), shape.end(), out.shape()) ||
            !(out.flags() & py::array::c_style) || !out.writeable()) {
            throw py::value_error("out must be a writable C-contiguous array of the table's "
                                  "dtype and shape " + shape_text(shape));
        }
    }
    const auto rows = static_cast<long long>(table.shape(0));
    const auto row_bytes = static_cast<std::size_t>(table.nbytes() / std::max<py::ssize_t>(rows, 1));
    const auto count = static_cast<std::size_t>(indices.size());
    const auto* table_data = static_cast<const char*>(table.data());
    const void* index_data = indices.data();
    auto* out_data = static_cast<char*>(out.mutable_data());
    return {[=](std::size_t threads) {
                const auto index = [&](std::size_t i) {
                    return wide ? static_cast<const std::int64_t*>(index_data)[i]
                                : static_cast<const std::int32_t*>(index_data)[i];
                };
                for (std::size_t i = 0; i < count; ++i) {
                    if (index(i) < -rows || index(i) >= rows) {
                        throw std::out_of_range(
                            "gather index out of range [-" + std::to_string(rows) + ", " +
                            std::to_string(rows) + "): " + std::to_string(index(i)) +
                            " at position " + std::to_string(i));
                    }
                }
                // Blocks of rows of at least 64 KiB per item, so a pooled thread pays off.
                const std::size_t block =
                    std::max<std::size_t>(1, (64 << 10) / std::max<std::size_t>(row_bytes, 1));
                nimbus::kernels::parallel_for(
                    (count + block - 1) / block, threads, [&](std::size_t item) {
                        for (std::size_t i = item * block; i < std::min(count, (item + 1) * block);
                             ++i) {
                            const long long row = index(i) < 0 ? index(i) + rows : index(i);
                            std::memcpy(out_data + i * row_bytes,
                                        table_data + static_cast<std::size_t>(row) * row_bytes,
                                        row_bytes);
                        }
                    });
            },
            out,
            {table, indices, out}};
}

py::array gather_rows(const py::object& table_object, const py::object& indices_object,
                      long long threads) {
    return run_now(prepare_gather_rows(table_object, indices_object, py::none()), threads);
}

// ---- programs ---------------------------------------------------------------------------------

// A fixed sequence of prepared calls over arrays allocated once: a small model's whole plan
// for one input shape, which run() executes in one call from Python, without the GIL. Not for
// concurrent runs: its calls share their arrays (the runtime lets one run at a time use it).
class Program {
public:
    void add(PreparedCall call) {
        steps_.push_back(std::move(call.run));
        keep_.insert(keep_.end(), call.keep.begin(), call.keep.end());
    }

    void run(long long threads) const {
        const std::size_t thread_count = checked_threads(threads);
        py::gil_scoped_release release;
        for (const auto& step : steps_) {
            step(thread_count);
        }
    }

    // The median milliseconds of each call over `repeats` runs of the whole program.
    std::vector<double> profile(long long threads, long long repeats) const {
        const std::size_t thread_count = checked_threads(threads);
        require_in_range("repeats", repeats, 1, kMaxProfileRepeats, "the range");
        const auto runs = static_cast<std::size_t>(repeats);
        std::vector<double> samples(steps_.size() * runs);
        {
            py::gil_scoped_release release;
            for (std::size_t run = 0; run < runs; ++run) {
                for (std::size_t index = 0; index < steps_.size(); ++index) {
                    const auto start = std::chrono::steady_clock::now();
                    steps_[index](thread_count);
                    samples[index * runs + run] = std::chrono::duration<double, std::milli>(
                                                      std::chrono::steady_clock::now() - start)
                                                      .count();
                }
            }
        }
        std::vector<double> medians(steps_.size());
        for (std::size_t index = 0; index < steps_.size(); ++index) {
            const auto first = samples.begin() + static_cast<std::ptrdiff_t>(index * runs);
            const auto middle = first + static_cast<std::ptrdiff_t>(runs / 2);
            std::nth_element(first, middle, first + static_cast<std::ptrdiff_t>(runs));
            // numpy.median's: the mean of the two middle values of an even count.
            medians[index] =
                runs % 2 == 1 ? *middle : (*middle + *std::max_element(first, middle)) / 2;
        }
        return medians;
    }

    std::size_t size() const { return steps_.size(); }

private:
    // A sample per call and run: 10000 runs of a 1000-call program keep 80 MB of them.
    static constexpr long long kMaxProfileRepeats = 10000;
    std::vector<std::function<void(std::size_t)>> steps_;
    std::vector<py::object> keep_;
};

// A step's `out`, which a program cannot allocate: nobody could read a result put elsewhere.
const py::object& program_out(const py::object& out) {
    if (out.is_none()) {
        throw py::value_error("a program step needs its out array");
    }
    return out;
}

PYBIND11_MODULE(_kernels, module) {
    module.doc() = "Native CPU kernels of the nimbus runtime (private: use nimbus.runtime).";
    nimbus::bindings::register_array_allocator(module);
    module.def("gemm_u8s8s32", &gemm_u8s8s32, py::arg("a"), py::arg("b"),
               "Return a @ b as int32 [M, N] for uint8 a [M, K] and int8 b [K, N].\n\n"
               "Both inputs must be C-contiguous numpy arrays; they are read in place.");
    module.def("gemm_s8s8s32", &gemm_s8s8s32, py::arg("a"), py::arg("b"),
               "Return a @ b as int32 [M, N] for int8 a [M, K] and int8 b [K, N].\n\n"
               "Both inputs must be C-contiguous numpy arrays; they are read in place.");
    module.def("available_isas", &available_isa_names,
               "Return the ISA paths of the packed GEMM that this machine runs, fastest first.");
    module.def("selected_isa",
               [] { return std::string(isa_name(nimbus::kernels::selected_isa())); },
               "Return the process-wide ISA path: NIMBUS_ISA when set, else the fastest.");
    py::class_<PackedWeights>(module, "PackedWeights",
                              "int8 weights [N, K] laid out once for one ISA path.")
        .def_property_readonly("n", [](const PackedWeights& w) { return w.n; })
        .def_property_readonly("k", [](const PackedWeights& w) { return w.k; })
        .def_property_readonly("isa", [](const PackedWeights& w) { return isa_name(w.isa); })
        .def("__repr__", [](const PackedWeights& w) {
            return "PackedWeights(n=" + std::to_string(w.n) + ", k=" + std::to_string(w.k) +
                   ", isa='" + isa_name(w.isa) + "')";
        });
    module.def("pack_weights", &pack_weights, py::arg("w"), py::arg("isa") = py::none(),
               "Pack int8 weights w [N, K] for the ISA path `isa` (default: gemm_isa(K, N)).");
    module.def(
        "multiply_peak_gops",
        [](const std::string& isa, long long threads) {
            const Isa path = nimbus::kernels::supported_isa(isa);
            const std::size_t count = checked_threads(threads);
            py::gil_scoped_release release;
            return nimbus::kernels::multiply_peak_gops(path, count);
        },
        py::arg("isa"), py::arg("threads") = 1,
        "The int8 multiply instruction of path `isa` alone, over accumulators in registers, on\n"
        "`threads` threads: 10^9 integer operations (2 per multiply-add) per second over about\n"
        "50 ms, the peak that the benchmarks relate the GEMMs to.");
    module.def("gemm_isa", [](std::size_t depth, std::size_t outputs) {
                   return std::string(isa_name(nimbus::kernels::gemm_isa(depth, outputs)));
               }, py::arg("depth"), py::arg("outputs"),
               "The path of int8 weights packed without a named path, for `outputs` outputs\n"
               "each summing `depth` products: selected_isa(), or avx512_vnni for a shallow\n"
               "or narrow layer where detection chose amx.");
    module.def("qgemm", &qgemm, py::arg("a"), py::arg("packed"), py::arg("a_zero_point"),
               py::arg("bias"), py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"),
               py::arg("hi"), py::arg("out_dtype"), py::arg("threads") = 1,
               py::arg("out") = py::none(), py::arg("residual") = py::none(), py::arg("residual_zero_point") = 0,
               py::arg("residual_scale") = 0.0, py::arg("activation") = "none",
               py::arg("output_scale") = py::none(),
               "Return clamp(rint(f32(acc) * multiplier + t) + out_zero_point, lo, hi) as u8 or "
               "s8 [M, N],\nwith acc = (a - a_zero_point) @ w.T + bias in int32.\n\n"
               "With a float activation (gelu, silu, ...), multiplier is the f32 result's scale "
               "and the result\nis quantize(act(f32(acc) * multiplier), output_scale, "
               "out_zero_point), each tile\nquantized while it is in cache (lo and hi are then "
               "the type's range; no residual)."
               "\n\n" NIMBUS_RESIDUAL_DOC NIMBUS_THREADS_AND_OUT_DOC);
    module.def("qgemm_f32", &qgemm_f32, py::arg("a"), py::arg("packed"), py::arg("a_zero_point"),
               py::arg("bias"), py::arg("scale"), py::arg("threads") = 1,
               py::arg("out") = py::none(), py::arg("residual") = py::none(), py::arg("residual_zero_point") = 0,
               py::arg("residual_scale") = 0.0, py::arg("activation") = "none",
               "Return act(f32(acc) * scale + t) as float32 [M, N], acc = (a - a_zero_point) @ "
               "w.T + bias, act the named activation of the float kernels (applied to each tile "
               "while it is in cache).\n\n" NIMBUS_RESIDUAL_DOC NIMBUS_THREADS_AND_OUT_DOC);
    module.def("qgemm_s32", &qgemm_s32, py::arg("a"), py::arg("packed"),
               py::arg("a_zero_point") = 0, py::arg("bias") = py::none(),
               py::arg("threads") = 1, py::arg("out") = py::none(),
               "Return acc = (a - a_zero_point) @ w.T + bias as int32 [M, N]."
               "\n\n" NIMBUS_THREADS_AND_OUT_DOC);
    py::class_<PackedConvWeights>(module, "PackedConvWeights",
                                  "int8 OIHW convolution weights laid out once for one ISA path.")
        .def_property_readonly("out_channels", [](const PackedConvWeights& w) {
            return w.out_channels;
        })
        .def_property_readonly("in_channels", [](const PackedConvWeights& w) {
            return w.group_channels * w.groups;
        })
        .def_property_readonly("kernel", [](const PackedConvWeights& w) {
            return py::make_tuple(w.kernel_h, w.kernel_w);
        })
        .def_property_readonly("groups", [](const PackedConvWeights& w) { return w.groups; })
        .def_property_readonly("depthwise", [](const PackedConvWeights& w) { return w.depthwise; })
        .def_property_readonly("isa", [](const PackedConvWeights& w) { return isa_name(w.isa); })
        .def("__repr__", [](const PackedConvWeights& w) {
            return "PackedConvWeights(out_channels=" + std::to_string(w.out_channels) +
                   ", in_channels=" + std::to_string(w.group_channels * w.groups) +
                   ", kernel=(" + std::to_string(w.kernel_h) + ", " +
                   std::to_string(w.kernel_w) + "), groups=" + std::to_string(w.groups) +
                   ", isa='" + isa_name(w.isa) + "')";
        });
    module.def("pack_conv_weights", &pack_conv_weights, py::arg("w"), py::arg("groups") = 1,
               py::arg("isa") = py::none(),
               "Pack int8 OIHW weights w [O, I / groups, KH, KW] for the ISA path `isa`\n"
               "(default: gemm_isa(KH * KW * I / groups, O / groups)).");
    const std::vector<long long> unit_pair{1, 1};
    const std::vector<long long> no_padding{0, 0, 0, 0};
    module.def("qconv2d", &qconv2d, py::arg("x"), py::arg("packed"), py::arg("a_zero_point"),
               py::arg("bias"), py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"),
               py::arg("hi"), py::arg("out_dtype"), py::arg("stride") = unit_pair,
               py::arg("padding") = no_padding, py::arg("dilation") = unit_pair,
               py::arg("threads") = 1, py::arg("out") = py::none(), py::arg("residual") = py::none(), py::arg("residual_zero_point") = 0,
               py::arg("residual_scale") = 0.0, py::arg("activation") = "none",
               py::arg("output_scale") = py::none(),
               "Return clamp(rint(f32(acc) * multiplier + t) + out_zero_point, lo, hi) as u8 or "
               "s8 [N, OH, OW, O]\nfor NHWC x, acc = conv2d(x - a_zero_point, w) + bias in int32."
               "\n\nWith a float activation (gelu, silu, ...), multiplier is the f32 result's "
               "scale and the result\nis quantize(act(f32(acc) * multiplier), output_scale, "
               "out_zero_point) (lo and hi are then\nthe type's range; no residual)."
               "\n\n" NIMBUS_RESIDUAL_DOC NIMBUS_CONV_KEYWORDS_DOC);
    module.def("qconv2d_f32", &qconv2d_f32, py::arg("x"), py::arg("packed"),
               py::arg("a_zero_point"), py::arg("bias"), py::arg("scale"),
               py::arg("stride") = unit_pair, py::arg("padding") = no_padding,
               py::arg("dilation") = unit_pair, py::arg("threads") = 1,
               py::arg("out") = py::none(), py::arg("residual") = py::none(), py::arg("residual_zero_point") = 0,
               py::arg("residual_scale") = 0.0, py::arg("activation") = "none",
               "Return act(f32(acc) * scale + t) as float32 [N, OH, OW, O] for NHWC x; act as "
               "for sgemm."
               "\n\n" NIMBUS_RESIDUAL_DOC NIMBUS_CONV_KEYWORDS_DOC);
    module.def("qconv2d_s32", &qconv2d_s32, py::arg("x"), py::arg("packed"),
               py::arg("a_zero_point") = 0, py::arg("bias") = py::none(),
               py::arg("stride") = unit_pair, py::arg("padding") = no_padding,
               py::arg("dilation") = unit_pair, py::arg("threads") = 1,
               py::arg("out") = py::none(),
               "Return acc = conv2d(x - a_zero_point, w) + bias as int32 [N, OH, OW, O]."
               "\n\n" NIMBUS_CONV_KEYWORDS_DOC);
    // ---- float32 GEMM and convolution
    py::class_<PackedSgemmWeights>(module, "PackedSgemmWeights",
                                   "float32 weights [N, K] laid out once for one ISA path.")
        .def_property_readonly("n", [](const PackedSgemmWeights& w) { return w.n; })
        .def_property_readonly("k", [](const PackedSgemmWeights& w) { return w.k; })
        .def_property_readonly("shape", [](const PackedSgemmWeights& w) {
            return py::make_tuple(w.n, w.k);
        })
        .def_property_readonly("isa", [](const PackedSgemmWeights& w) { return isa_name(w.isa); })
        .def("__repr__", [](const PackedSgemmWeights& w) {
            return "PackedSgemmWeights(shape=(" + std::to_string(w.n) + ", " +
                   std::to_string(w.k) + "), isa='" + isa_name(w.isa) + "')";
        });
    module.def("pack_sgemm_weights", &pack_sgemm_weights, py::arg("w"),
               py::arg("isa") = py::none(),
               "Pack float32 Linear weights w [N, K] (out = x @ w.T) for the ISA path `isa`\n"
               "(default: selected_isa()).");
    module.def("sgemm", &sgemm, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
               py::arg("residual") = py::none(), py::arg("activation") = "none",
               py::arg("threads") = 1, py::arg("out") = py::none(),
               "Return act(x @ w.T + bias + residual) as float32 [M, N] for float32 x [M, K].\n\n"
               "bias: [N] or None; residual: [M, N] or None; activation: none, relu, relu6, gelu "
               "(erf),\ngelu_tanh, silu, sigmoid, tanh or hardswish; threads: at most this many "
               "threads;\nout: a C-contiguous [M, N] float32 array to write and return instead "
               "of a new one.");
    py::class_<PackedSconvWeights>(module, "PackedSconvWeights",
                                   "float32 OIHW convolution weights laid out once for one ISA "
                                   "path.")
        .def_property_readonly("out_channels", [](const PackedSconvWeights& w) {
            return w.out_channels;
        })
        .def_property_readonly("in_channels", [](const PackedSconvWeights& w) {
            return w.group_channels * w.groups;
        })
        .def_property_readonly("kernel", [](const PackedSconvWeights& w) {
            return py::make_tuple(w.kernel_h, w.kernel_w);
        })
        .def_property_readonly("groups", [](const PackedSconvWeights& w) { return w.groups; })
        .def_property_readonly("depthwise",
                               [](const PackedSconvWeights& w) { return w.depthwise; })
        .def_property_readonly(
            "winograd", [](const PackedSconvWeights& w) { return !w.winograd_weights.empty(); },
            "Whether stride-1, undilated calls take Winograd F(2x2, 3x3) (AVX-512, 3x3, one "
            "group,\nat least 32 channels each side).")
        .def_property_readonly(
            "few_inputs",
            [](const PackedSconvWeights& w) { return !w.few_inputs_weights.empty(); },
            "Whether undilated calls take the direct kernel over few input channels (AVX-512, "
            "one\ngroup, at most 4 input channels, 9 to 64 outputs, a kernel larger than 1x1).")
        .def_property_readonly(
            "grouped", [](const PackedSconvWeights& w) { return !w.grouped_weights.empty(); },
            "Whether calls without a residual take the direct kernel over narrow groups "
            "(AVX-512,\n2 to 16 outputs per group dividing 16, no more input channels per group "
            "than that).")
        .def_property_readonly("isa", [](const PackedSconvWeights& w) { return isa_name(w.isa); })
        .def("__repr__", [](const PackedSconvWeights& w) {
            return "PackedSconvWeights(shape=(" + std::to_string(w.out_channels) + ", " +
                   std::to_string(w.group_channels) + ", " + std::to_string(w.kernel_h) + ", " +
                   std::to_string(w.kernel_w) + "), groups=" + std::to_string(w.groups) +
                   (w.depthwise ? ", depthwise" : "") +
                   (w.winograd_weights.empty() ? "" : ", winograd") + ", isa='" +
                   isa_name(w.isa) + "')";
        });
    module.def("pack_sconv_weights", &pack_sconv_weights, py::arg("w"), py::arg("groups") = 1,
               py::arg("isa") = py::none(), py::arg("unit_stride") = false,
               "Pack float32 OIHW weights w [O, I / groups, KH, KW] for the ISA path `isa`;\n"
               "depthwise weights (groups == I == O) for the direct depthwise kernel.\n"
               "unit_stride: the weights will only run with stride 1 and dilation 1, so weights "
               "that take\nWinograd are packed in that form alone (less memory and packing time); "
               "sconv2d\nrefuses other geometries for them.");
    module.def("sconv2d", &sconv2d, py::arg("x"), py::arg("packed"), py::arg("bias") = py::none(),
               py::arg("residual") = py::none(), py::arg("activation") = "none",
               py::arg("stride") = unit_pair, py::arg("padding") = no_padding,
               py::arg("dilation") = unit_pair, py::arg("threads") = 1,
               py::arg("out") = py::none(),
               "Return act(conv2d(x, w) + bias + residual) as float32 NHWC [N, OH, OW, O] for "
               "NHWC x.\n\nbias: [O] or None; residual: [N, OH, OW, O] or None; stride: (h, w); "
               "padding: [top, left,\nbottom, right] of zeros; dilation: (h, w); activation, "
               "threads and out as for sgemm.");
    module.def(
        "sconv2d_max_pool2d",
        [](const py::object& x, const PackedSconvWeights& packed, const py::object& bias,
           const std::string& activation, const std::vector<long long>& stride,
           const std::vector<long long>& padding, const std::vector<long long>& dilation,
           const std::vector<long long>& pool_kernel, const std::vector<long long>& pool_stride,
           const std::vector<long long>& pool_padding, const std::vector<long long>& pool_dilation,
           const std::vector<long long>& pool_out_hw, long long threads, const py::object& out) {
            return run_now(prepare_sconv2d_max_pool2d(x, packed, bias, activation, stride,
                                                      padding, dilation, pool_kernel,
                                                      pool_stride, pool_padding, pool_dilation,
                                                      pool_out_hw, out),
                           threads);
        },
        py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("activation"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("pool_kernel"), py::arg("pool_stride"),
        py::arg("pool_padding"), py::arg("pool_dilation"), py::arg("pool_out_hw"),
        py::arg("threads") = 1, py::arg("out") = py::none(),
        "Return max_pool2d(sconv2d(x, ...)) [N, POH, POW, O] as qconv2d_max_pool2d does (within\n"
        "float rounding), for float32 NHWC x and weights not packed in the Winograd form.");
    module.def("inverted_residual", &inverted_residual, py::arg("x"), py::arg("expand"),
               py::arg("expand_bias"), py::arg("expand_activation"), py::arg("depthwise"),
               py::arg("depthwise_bias"), py::arg("depthwise_activation"), py::arg("stride"),
               py::arg("padding"), py::arg("dilation"), py::arg("project"),
               py::arg("project_bias"), py::arg("project_activation"),
               py::arg("residual") = py::none(), py::arg("threads") = 1,
               "Return an inverted residual block over NHWC x as float32 [N, OH, OW, O]:\n"
               "e = act(conv1x1(x, expand) + bias) (e = x for expand None, with expand_bias\n"
               "None and expand_activation 'none'), d = act(depthwise(e) + bias) with stride,\n"
               "padding and dilation as for sconv2d, then act(conv1x1(d, project) + bias + "
               "residual),\nrun band by band of output rows so that e stays in cache; each "
               "value as sconv2d computes it.");
    module.def("to_channels_last", &to_channels_last, py::arg("x"),
               py::arg("threads") = 1,
               "Return C-contiguous float32 x [N, C, H, W] as a new C-contiguous [N, H, W, C] "
               "array.");
    py::class_<ElementwiseProgram>(
        module, "ElementwiseProgram",
        "A fused elementwise expression as a checked stack program of (op, index, a, b) steps,\n"
        "postfix: input (push input `index` as float32), constant (push a), add, sub, mul, div,\n"
        "maximum, minimum (numpy's NaN and tie rules), neg, abs, sqrt, clip (numpy.clip to\n"
        "[a, b]) or an activation's name (gelu, gelu_tanh, sigmoid, silu, tanh, hardswish).")
        .def(py::init(&elementwise_program), py::arg("steps"))
        .def_property_readonly("inputs",
                               [](const ElementwiseProgram& program) { return program.operands; })
        .def("__len__", [](const ElementwiseProgram& program) { return program.steps.size(); });
    module.def(
        "elementwise",
        [](const ElementwiseProgram& program, const py::list& inputs, long long threads) {
            return run_now(prepare_elementwise(program, inputs, py::none()), threads);
        },
        py::arg("program"), py::arg("inputs"), py::arg("threads") = 1,
        "Return the program over the inputs broadcast together (numpy's rules) as a new "
        "float32 array,\nin one pass over memory; inputs may be strided views.");
    module.def(
        "elementwise_concat",
        [](const ElementwiseProgram& program, const py::list& parts, const py::list& params,
           long long threads) {
            return run_now(prepare_elementwise_concat(program, parts, params, py::none()),
                           threads);
        },
        py::arg("program"), py::arg("parts"), py::arg("params"), py::arg("threads") = 1,
        "Return the program over the concatenation of `parts` ([N, C_i, H, W] float32) along\n"
        "channels, with per-channel `params` as its other inputs, as a new NHWC float32 array\n"
        "[N, H, W, C], without writing the concatenation.");
    py::class_<Program>(module, "Program",
                        "A fixed sequence of native calls over arrays allocated once, run in "
                        "one call without the GIL.\nEach method checks its operands as the "
                        "function of the same name does and appends the call;\nits result goes "
                        "into `out`, which is required. Runs must not overlap.")
        .def(py::init<>())
        .def(
            "sconv2d",
            [](Program& program, const py::object& x, const PackedSconvWeights& packed,
               const py::object& bias, const py::object& residual, const std::string& activation,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const py::object& out) {
                program.add(prepare_sconv2d(x, packed, bias, residual, activation, stride,
                                            padding, dilation, program_out(out)));
            },
            py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("residual"),
            py::arg("activation"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
            py::arg("out"))
        .def(
            "sgemm",
            [](Program& program, const py::object& x, const PackedSgemmWeights& packed,
               const py::object& bias, const py::object& residual, const std::string& activation,
               const py::object& out) {
                program.add(prepare_sgemm(x, packed, bias, residual, activation,
                                          program_out(out)));
            },
            py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("residual"),
            py::arg("activation"), py::arg("out"))
        .def(
            "max_pool2d",
            [](Program& program, const py::object& x, const std::vector<long long>& kernel,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const std::vector<long long>& out_hw,
               const py::object& out) {
                program.add(prepare_max_pool2d(x, kernel, stride, padding, dilation, out_hw,
                                               program_out(out)));
            },
            py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
            py::arg("dilation"), py::arg("out_hw"), py::arg("out"))
        .def(
            "avg_pool2d",
            [](Program& program, const py::object& x, const std::vector<long long>& kernel,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& out_hw, bool count_include_pad,
               const py::object& out) {
                program.add(prepare_avg_pool2d(x, kernel, stride, padding, out_hw,
                                               count_include_pad, program_out(out)));
            },
            py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
            py::arg("out_hw"), py::arg("count_include_pad"), py::arg("out"))
        .def(
            "sconv2d_max_pool2d",
            [](Program& program, const py::object& x, const PackedSconvWeights& packed,
               const py::object& bias, const std::string& activation,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const std::vector<long long>& pool_kernel,
               const std::vector<long long>& pool_stride,
               const std::vector<long long>& pool_padding,
               const std::vector<long long>& pool_dilation,
               const std::vector<long long>& pool_out_hw, const py::object& out) {
                program.add(prepare_sconv2d_max_pool2d(
                    x, packed, bias, activation, stride, padding, dilation, pool_kernel,
                    pool_stride, pool_padding, pool_dilation, pool_out_hw, program_out(out)));
            },
            py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("activation"),
            py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("pool_kernel"),
            py::arg("pool_stride"), py::arg("pool_padding"), py::arg("pool_dilation"),
            py::arg("pool_out_hw"), py::arg("out"))
        .def(
            "qconv2d_max_pool2d",
            [](Program& program, const py::object& x, const PackedConvWeights& packed,
               long long a_zero_point, const py::object& bias, const py::object& multiplier,
               long long out_zero_point, long long lo, long long hi, const std::string& out_dtype,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const std::vector<long long>& pool_kernel,
               const std::vector<long long>& pool_stride,
               const std::vector<long long>& pool_padding,
               const std::vector<long long>& pool_dilation,
               const std::vector<long long>& pool_out_hw, const py::object& out) {
                program.add(prepare_qconv2d_max_pool2d(
                    x, packed, a_zero_point, bias, multiplier, out_zero_point, lo, hi, out_dtype,
                    stride, padding, dilation, pool_kernel, pool_stride, pool_padding,
                    pool_dilation, pool_out_hw, program_out(out)));
            },
            py::arg("x"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
            py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"), py::arg("hi"),
            py::arg("out_dtype"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
            py::arg("pool_kernel"), py::arg("pool_stride"), py::arg("pool_padding"),
            py::arg("pool_dilation"), py::arg("pool_out_hw"), py::arg("out"))
        .def(
            "to_channels_last",
            [](Program& program, const py::object& x, const py::object& out) {
                program.add(prepare_channel_move(x, true, program_out(out)));
            },
            py::arg("x"), py::arg("out"),
            "out [N, H, W, C] = x [N, C, H, W] (float32, uint8 or int8).")
        .def(
            "to_channels_first",
            [](Program& program, const py::object& x, const py::object& out) {
                program.add(prepare_channel_move(x, false, program_out(out)));
            },
            py::arg("x"), py::arg("out"),
            "out [N, C, H, W] = x [N, H, W, C] (float32, uint8 or int8).")
        .def(
            "quantize",
            [](Program& program, const py::object& x, double scale, long long zero_point,
               const std::string& dtype, bool channels_last, const py::object& out) {
                program.add(prepare_quantize(x, scale, zero_point, dtype, channels_last,
                                             program_out(out)));
            },
            py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("dtype"),
            py::arg("channels_last"), py::arg("out"))
        .def(
            "qgemm",
            [](Program& program, const py::object& a, const PackedWeights& packed,
               long long a_zero_point, const py::object& bias, const py::object& multiplier,
               long long out_zero_point, long long lo, long long hi, const std::string& out_dtype,
               const py::object& out, const py::object& residual, long long residual_zero_point,
               double residual_scale, const std::string& activation,
               const std::optional<double>& output_scale) {
                program.add(prepare_qgemm_requantized(
                    a, packed, a_zero_point, bias, multiplier, out_zero_point, lo, hi, out_dtype,
                    program_out(out), residual, residual_zero_point, residual_scale, activation,
                    output_scale));
            },
            py::arg("a"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
            py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"), py::arg("hi"),
            py::arg("out_dtype"), py::arg("out"), py::arg("residual"),
            py::arg("residual_zero_point"), py::arg("residual_scale"), py::arg("activation"),
            py::arg("output_scale"))
        .def(
            "qgemm_f32",
            [](Program& program, const py::object& a, const PackedWeights& packed,
               long long a_zero_point, const py::object& bias, const py::object& scale,
               const py::object& out, const py::object& residual, long long residual_zero_point,
               double residual_scale, const std::string& activation) {
                program.add(prepare_qgemm_f32(a, packed, a_zero_point, bias, scale,
                                              program_out(out), residual, residual_zero_point,
                                              residual_scale, activation));
            },
            py::arg("a"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
            py::arg("scale"), py::arg("out"), py::arg("residual"),
            py::arg("residual_zero_point"), py::arg("residual_scale"), py::arg("activation"))
        .def(
            "qconv2d",
            [](Program& program, const py::object& x, const PackedConvWeights& packed,
               long long a_zero_point, const py::object& bias, const py::object& multiplier,
               long long out_zero_point, long long lo, long long hi, const std::string& out_dtype,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const py::object& out,
               const py::object& residual, long long residual_zero_point,
               double residual_scale, const std::string& activation,
               const std::optional<double>& output_scale) {
                program.add(prepare_qconv2d_requantized(
                    x, packed, a_zero_point, bias, multiplier, out_zero_point, lo, hi, out_dtype,
                    stride, padding, dilation, program_out(out), residual, residual_zero_point,
                    residual_scale, activation, output_scale));
            },
            py::arg("x"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
            py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"), py::arg("hi"),
            py::arg("out_dtype"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
            py::arg("out"), py::arg("residual"), py::arg("residual_zero_point"),
            py::arg("residual_scale"), py::arg("activation"), py::arg("output_scale"))
        .def(
            "qconv2d_f32",
            [](Program& program, const py::object& x, const PackedConvWeights& packed,
               long long a_zero_point, const py::object& bias, const py::object& scale,
               const std::vector<long long>& stride, const std::vector<long long>& padding,
               const std::vector<long long>& dilation, const py::object& out,
               const py::object& residual, long long residual_zero_point,
               double residual_scale, const std::string& activation) {
                program.add(prepare_qconv2d_f32(x, packed, a_zero_point, bias, scale, stride,
                                                padding, dilation, program_out(out), residual,
                                                residual_zero_point, residual_scale,
                                                activation));
            },
            py::arg("x"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
            py::arg("scale"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
            py::arg("out"), py::arg("residual"), py::arg("residual_zero_point"),
            py::arg("residual_scale"), py::arg("activation"))
        .def(
            "mean_axis",
            [](Program& program, const py::object& x, const py::object& out) {
                program.add(prepare_mean_axis(x, program_out(out)));
            },
            py::arg("x"), py::arg("out"))
        .def(
            "inverted_residual",
            [](Program& program, const py::object& x, const PackedSconvWeights* expand,
               const py::object& expand_bias, const std::string& expand_activation,
               const PackedSconvWeights& depthwise, const py::object& depthwise_bias,
               const std::string& depthwise_activation, const std::vector<long long>& stride,
               const std::vector<long long>& padding, const std::vector<long long>& dilation,
               const PackedSconvWeights& project, const py::object& project_bias,
               const std::string& project_activation, const py::object& residual,
               const py::object& out) {
                program.add(prepare_inverted_residual(
                    x, expand, expand_bias, expand_activation, depthwise, depthwise_bias,
                    depthwise_activation, stride, padding, dilation, project, project_bias,
                    project_activation, residual, program_out(out)));
            },
            py::arg("x"), py::arg("expand"), py::arg("expand_bias"),
            py::arg("expand_activation"), py::arg("depthwise"), py::arg("depthwise_bias"),
            py::arg("depthwise_activation"), py::arg("stride"), py::arg("padding"),
            py::arg("dilation"), py::arg("project"), py::arg("project_bias"),
            py::arg("project_activation"), py::arg("residual"), py::arg("out"))
        .def(
            "elementwise",
            [](Program& program, const ElementwiseProgram& steps, const py::list& inputs,
               const py::object& out) {
                program.add(prepare_elementwise(steps, inputs, program_out(out)));
            },
            py::arg("program"), py::arg("inputs"), py::arg("out"))
        .def(
            "elementwise_concat",
            [](Program& program, const ElementwiseProgram& steps, const py::list& parts,
               const py::list& params, const py::object& out) {
                program.add(prepare_elementwise_concat(steps, parts, params, program_out(out)));
            },
            py::arg("program"), py::arg("parts"), py::arg("params"), py::arg("out"))
        .def(
            "attention",
            [](Program& program, const py::object& q, const py::object& k, const py::object& v,
               const py::object& mask, const std::optional<double>& scale,
               const py::object& out) {
                program.add(prepare_attention(q, k, v, mask, scale, program_out(out)));
            },
            py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("scale"),
            py::arg("out"))
        .def(
            "qattention",
            [](Program& program, const py::object& q, const py::object& k, const py::object& v,
               const py::object& mask, const std::array<std::int32_t, 3>& zero_points,
               double score_scale, double value_scale, const py::object& out) {
                program.add(prepare_qattention(q, k, v, mask, zero_points, score_scale,
                                               value_scale, program_out(out)));
            },
            py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"), py::arg("zero_points"),
            py::arg("score_scale"), py::arg("value_scale"), py::arg("out"))
        .def(
            "layer_norm",
            [](Program& program, const py::object& x, const py::object& weight,
               const py::object& bias, double eps, const py::object& out) {
                program.add(prepare_layer_norm(x, weight, bias, eps, program_out(out)));
            },
            py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("out"))
        .def(
            "dequantize",
            [](Program& program, const py::object& q, double scale, long long zero_point,
               const py::object& out) {
                program.add(prepare_dequantize(q, scale, zero_point, program_out(out)));
            },
            py::arg("q"), py::arg("scale"), py::arg("zero_point"), py::arg("out"))
        .def(
            "dequantize_channels",
            [](Program& program, const py::object& q, const py::object& scales,
               const py::object& zero_points, const py::object& out) {
                program.add(prepare_dequantize_channels(q, scales, zero_points, program_out(out)));
            },
            py::arg("q"), py::arg("scales"), py::arg("zero_points"), py::arg("out"))
        .def(
            "gather_rows",
            [](Program& program, const py::object& table, const py::object& indices,
               const py::object& out) {
                program.add(prepare_gather_rows(table, indices, program_out(out)));
            },
            py::arg("table"), py::arg("indices"), py::arg("out"))
        .def(
            "softmax",
            [](Program& program, const py::object& x, long long axis, const py::object& out) {
                program.add(prepare_softmax(x, axis, program_out(out)));
            },
            py::arg("x"), py::arg("axis"), py::arg("out"))
        .def("run", &Program::run, py::arg("threads") = 1,
             "Run every call in order on at most `threads` threads.")
        .def("profile", &Program::profile, py::arg("threads") = 1, py::arg("repeats") = 10,
             "Run the program `repeats` (1 to 10000) times; return each call's median "
             "milliseconds.")
        .def("__len__", &Program::size);
    module.def("mean_axis", &mean_axis, py::arg("x"), py::arg("threads") = 1,
               "Return the mean over axis 1 of C-contiguous float32 x [O, L, I] as float32 "
               "[O, I],\nsummed in float64 (a global average pool over NHWC pixels).");
    module.def("activation", &activation, py::arg("x"), py::arg("activation"),
               py::arg("threads") = 1,
               "Return act(x) for float32 x of any shape: relu, relu6, gelu (erf), gelu_tanh, "
               "silu,\nsigmoid, tanh or hardswish, as the float kernels' epilogues compute it.");
    module.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"),
               py::arg("mask") = py::none(), py::arg("scale") = py::none(),
               py::arg("threads") = 1, py::arg("out") = py::none(),
               "Return softmax(q @ k^T * scale + mask) @ v as float32 [..., L, Dv] for float32 "
               "q [..., L, D],\nk [..., S, D] and v [..., S, Dv] with the same batch dimensions, "
               "each with contiguous rows\n(any other non-negative strides: transposed heads are "
               "read in place); the result goes\ninto `out` (any such layout) when given."
               "\n\nmask: None, bool (True = attend) or float32 (added to the scores), "
               "broadcastable to\n[..., L, S]; rows whose scores are all -inf give zeros. scale: "
               "default 1 / sqrt(D);\nthreads: at most this many threads.");
    module.def("qattention", &qattention, py::arg("q"), py::arg("k"), py::arg("v"),
               py::arg("mask"), py::arg("zero_points"), py::arg("score_scale"),
               py::arg("value_scale"), py::arg("threads") = 1, py::arg("out") = py::none(),
               "Return the integer attention as float32 [..., L, Dv] for uint8 or int8 q [..., L, "
               "D],\nk [..., S, D] and v [..., S, Dv] (laid out as attention() takes them) with "
               "zero points\n(zq, zk, zv): scores f32(sum (q - zq)(k - zk)) * score_scale, "
               "masked as attention()\nmasks them, u8 softmax codes e of each row (255 at its "
               "maximum), and\nf32(sum e (v - zv)) * (value_scale / f32(sum e)); integer sums "
               "wrap in int32.");
    module.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight") = py::none(),
               py::arg("bias") = py::none(), py::arg("eps") = 1e-5,
               py::arg("threads") = 1,
               "Return (x - mean) / sqrt(var + eps) * weight + bias over the last axis of "
               "float32 x [..., C].\n\nweight, bias: float32 [C] or None; threads: at most this "
               "many threads.");
    module.def("softmax", &softmax, py::arg("x"), py::arg("axis") = -1,
               py::arg("threads") = 1,
               "Return softmax over the last axis of float32 x [..., C], shifted by the row "
               "maximum.\n\naxis: -1 (or x.ndim - 1) only; threads: at most this many threads.");
    module.def(
        "qconv2d_max_pool2d",
        [](const py::object& x, const PackedConvWeights& packed, long long a_zero_point,
           const py::object& bias, const py::object& multiplier, long long out_zero_point,
           long long lo, long long hi, const std::string& out_dtype,
           const std::vector<long long>& stride, const std::vector<long long>& padding,
           const std::vector<long long>& dilation, const std::vector<long long>& pool_kernel,
           const std::vector<long long>& pool_stride, const std::vector<long long>& pool_padding,
           const std::vector<long long>& pool_dilation, const std::vector<long long>& pool_out_hw,
           long long threads, const py::object& out) {
            return run_now(prepare_qconv2d_max_pool2d(
                               x, packed, a_zero_point, bias, multiplier, out_zero_point, lo, hi,
                               out_dtype, stride, padding, dilation, pool_kernel, pool_stride,
                               pool_padding, pool_dilation, pool_out_hw, out),
                           threads);
        },
        py::arg("x"), py::arg("packed"), py::arg("a_zero_point"), py::arg("bias"),
        py::arg("multiplier"), py::arg("out_zero_point"), py::arg("lo"), py::arg("hi"),
        py::arg("out_dtype"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("pool_kernel"), py::arg("pool_stride"), py::arg("pool_padding"),
        py::arg("pool_dilation"), py::arg("pool_out_hw"), py::arg("threads") = 1,
        py::arg("out") = py::none(),
        "Return max_pool2d(qconv2d(x, ...), pool_kernel, pool_stride, pool_padding,\n"
        "pool_dilation, pool_out_hw) [N, POH, POW, O] without the convolution's whole result:\n"
        "it runs in bands of rows that stay in cache. Padding rows must be fewer than the\n"
        "kernel's rows and every pooling window must start above the convolution's last row.");
    module.def("max_pool2d", &max_pool2d, py::arg("x"), py::arg("kernel"), py::arg("stride"),
               py::arg("padding"), py::arg("dilation"), py::arg("out_hw"),
               py::arg("threads") = 1,
               "Return the max over each window of NHWC x (uint8, int8 or float32) as\n"
               "[N, OH, OW, C]; taps in the padding [top, left, bottom, right] never win, NaN "
               "does;\nout_hw: (OH, OW) of the caller's floor or ceil mode.");
    module.def("avg_pool2d", &avg_pool2d, py::arg("x"), py::arg("kernel"), py::arg("stride"),
               py::arg("padding"), py::arg("out_hw"), py::arg("count_include_pad"),
               py::arg("threads") = 1,
               "Return the average of each window of NHWC float32 x as [N, OH, OW, C]: taps\n"
               "summed in row-major order (0 in the padding [top, left, bottom, right]), divided\n"
               "by the taps in the image, or in the padded image when count_include_pad;\n"
               "out_hw: (OH, OW) of the caller's floor or ceil mode.");
    module.def("quantize", &quantize, py::arg("x"), py::arg("scale"), py::arg("zero_point"),
               py::arg("dtype"), py::arg("channels_last") = false,
               py::arg("threads") = 1,
               "Return clamp(rint(x / scale) + zero_point) of C-contiguous float32 x as uint8\n"
               "(dtype 'u8') or int8 ('s8'), in float32 as the reference computes it (NaN -> 0);\n"
               "channels_last: x is NCHW and the result NHWC [N, H, W, C].");
    module.def("dequantize", &dequantize, py::arg("q"), py::arg("scale"), py::arg("zero_point"),
               py::arg("threads") = 1,
               "Return float32 (q - zero_point) * scale of C-contiguous uint8 or int8 q.");
    module.def("gather_rows", &gather_rows, py::arg("table"), py::arg("indices"),
               py::arg("threads") = 1,
               "Return numpy.take(table, indices, axis=0) for a C-contiguous table of any dtype "
               "and\nC-contiguous int64 or int32 indices; IndexError names an index outside "
               "[-rows, rows).");
    module.def("dequantize_channels", &dequantize_channels, py::arg("q"), py::arg("scales"),
               py::arg("zero_points"), py::arg("threads") = 1,
               "Return float32 (q - zero_points[c]) * scales[c] of C-contiguous uint8 or int8\n"
               "q [..., C], c the index on the last axis; scales float32 [C], zero_points int32 [C].");
    module.def("kernels_version", [] { return std::string(NIMBUS_VERSION); },
               "Return the nimbus version that the kernels were built from.");
}
