"""Tensors in and out of requests: datatype names, JSON data, raw bytes, shape checks.

Everything that turns client data into the arrays ``Session.run`` takes goes through here, so
each protocol module (KServe, SageMaker, Vertex AI) applies the same checks: known datatype,
shape of non-negative ints matching the model's, element count equal to the shape's, values of
the right kind and range for the dtype (NaN and infinities are floats, never ints).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..dims import bind_dim
from ..session import TensorSpec
from .errors import bad_request

# Runtime dtype -> Open Inference Protocol v2 datatype name.
V2_DATATYPES = {"f32": "FP32", "f16": "FP16", "i8": "INT8", "u8": "UINT8", "i32": "INT32",
                "i64": "INT64", "bool": "BOOL"}
# Every v2 datatype name the protocol defines, with its little-endian numpy dtype where the
# runtime has one; the others are known names that no nimbus model takes.
KNOWN_DATATYPES = {
    "BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "|i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4",
    "FP64": "<f8", "BYTES": None, "BF16": None,
}
MAX_RANK = 16
MAX_ELEMENTS = 1 << 31


def v2_datatype(dtype: str) -> str:
    return V2_DATATYPES[dtype]


def wire_dtype(dtype: str) -> np.dtype:
    """The little-endian numpy dtype of a runtime dtype, as it travels in binary payloads."""
    return np.dtype(KNOWN_DATATYPES[V2_DATATYPES[dtype]])


def v2_shape(spec: TensorSpec) -> list[int]:
    """The model's shape in v2 metadata: symbolic dims are -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def check_datatype(name: str, datatype, spec: TensorSpec) -> None:
    if not isinstance(datatype, str):
        raise bad_request(f"input '{name}': 'datatype' must be a string")
    if datatype not in KNOWN_DATATYPES:
        raise bad_request(f"input '{name}': unknown datatype '{datatype[:32]}'")
    expected = V2_DATATYPES[spec.dtype]
    if datatype != expected:
        raise bad_request(f"input '{name}' has datatype {datatype}, the model takes {expected}")


def check_shape(name: str, shape, spec: TensorSpec, bindings: dict) -> tuple[int, ...]:
    """Validate a client's shape against the model's (fixed dims equal, symbolic dims bound
    consistently across inputs); returns it as a tuple."""
    if not isinstance(shape, list) or any(type(d) is not int for d in shape):
        raise bad_request(f"input '{name}': 'shape' must be a list of integers")
    if len(shape) > MAX_RANK:
        raise bad_request(f"input '{name}': rank {len(shape)} is over the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise bad_request(f"input '{name}': shape {shape} has a negative dimension")
    if math.prod(shape) > MAX_ELEMENTS:
        raise bad_request(f"input '{name}': shape {shape} has too many elements")
    if len(shape) != len(spec.shape):
        raise bad_request(f"input '{name}' must have rank {len(spec.shape)} "
                          f"(shape {v2_shape(spec)}), got shape {shape}")
    for axis, (dim, actual) in enumerate(zip(spec.shape, shape)):
        problem = bind_dim(dim, actual, bindings)
        if problem:
            raise bad_request(f"input '{name}' axis {axis} (shape {v2_shape(spec)}): {problem}")
    return tuple(shape)


def array_from_values(name: str, values, dtype: str) -> np.ndarray:
    """A numpy array of the runtime dtype from JSON values (nested lists of numbers or
    booleans), keeping the nesting's shape; kinds and ranges checked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = np.array(values)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise bad_request(f"input '{name}': data is not a regular (rectangular) array of numbers") from None
    return cast_checked(name, raw, dtype)


def cast_checked(name: str, raw: np.ndarray, dtype: str) -> np.ndarray:
    """Convert parsed values to the runtime dtype when no information is lost in kind: floats
    take ints and floats (NaN included); ints take ints inside their range; BOOL takes booleans."""
    target = np.dtype(wire_dtype(dtype).newbyteorder("="))
    datatype = V2_DATATYPES[dtype]
    if raw.size == 0:
        return np.zeros(raw.shape, target)
    kind = raw.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise bad_request(f"input '{name}' is BOOL: data must be true/false values")
        return raw.astype(target)
    if target.kind in "iu":
        if kind not in "iu":
            what = "non-integer (or NaN) values" if kind == "f" else "values that are not integers"
            raise bad_request(f"input '{name}' is {datatype}: data has {what}")
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise bad_request(f"input '{name}' is {datatype}: values outside [{info.min}, {info.max}]")
        return raw.astype(target)
    if kind not in "iuf":
        raise bad_request(f"input '{name}' is {datatype}: data must be numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        out = raw.astype(target)
    if kind == "f" and raw.dtype.itemsize > target.itemsize and np.any(np.isinf(out) & np.isfinite(raw)):
        raise bad_request(f"input '{name}' is {datatype}: a value is outside its range")
    return out


def array_from_data(name: str, data, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The tensor of a v2 JSON input: ``data`` flat or nested, row-major, with exactly as
    many elements as ``shape`` holds."""
    if not isinstance(data, list):
        raise bad_request(f"input '{name}': 'data' must be a JSON array")
    array = array_from_values(name, data, dtype)
    count = math.prod(shape)
    if array.size != count:
        raise bad_request(f"input '{name}': data has {array.size} elements, shape {list(shape)} "
                          f"needs {count}")
    return array.reshape(shape)


def array_from_bytes(name: str, payload: memoryview, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The tensor of a binary input: exactly shape x item size little-endian bytes."""
    wire = wire_dtype(dtype)
    expected = math.prod(shape) * wire.itemsize
    if len(payload) != expected:
        raise bad_request(f"input '{name}': binary_data_size is {len(payload)} bytes, shape "
                          f"{list(shape)} of {V2_DATATYPES[dtype]} needs {expected}")
    if wire.kind == "b":
        raw = np.frombuffer(payload, np.uint8)
        if raw.size and raw.max() > 1:
            raise bad_request(f"input '{name}' is BOOL: binary bytes must be 0 or 1")
    array = np.frombuffer(payload, wire).reshape(shape)
    return array.astype(wire.newbyteorder("="), copy=False)


def to_wire_bytes(array: np.ndarray) -> bytes:
    """An output's raw bytes, row-major little-endian, as the binary extension sends them."""
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def datatype_of(array: np.ndarray) -> str:
    for dtype, datatype in V2_DATATYPES.items():
        if wire_dtype(dtype).newbyteorder("=") == array.dtype.newbyteorder("="):
            return datatype
    raise ValueError(f"no v2 datatype for {array.dtype}")
