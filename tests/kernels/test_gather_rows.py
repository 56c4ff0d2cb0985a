"""The native row gather (numpy.take along axis 0, an embedding lookup) against numpy: tables
of every dtype and rank, int64 and int32 indices of any shape, negative indices, empty tables
and index arrays, 1 and 2 threads, the gather op's native and numpy paths, the program step,
and clear errors for out-of-range indices and bad arguments."""

import numpy as np
import pytest
from nimbus.runtime import _kernels
from nimbus.runtime.cpu_ops.registry import NATIVE_THREADS
from nimbus.runtime.cpu_ops.shape import gather


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int8, np.int64, np.float16, np.bool_])
@pytest.mark.parametrize("table_shape, index_shape", [
    ((30522, 768), (8, 128)), ((7,), (3, 5)), ((5, 3, 2), (4,)), ((9, 1), ()), ((4, 0), (6,)),
    ((3, 17), (0, 2)),
])
def test_rows_are_numpy_take(table_shape, index_shape, dtype, threads):
    rng = np.random.default_rng([len(table_shape), len(index_shape)])
    table = rng.integers(-100, 100, table_shape).astype(dtype)
    for index_dtype in (np.int64, np.int32):
        indices = rng.integers(-table_shape[0], table_shape[0], index_shape).astype(index_dtype)
        actual = _kernels.gather_rows(table, indices, threads)
        expected = np.take(table, indices, axis=0)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("index", [10, -11, 2**40])
def test_an_index_out_of_range_names_itself_and_its_position(index):
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    with pytest.raises(IndexError, match=rf"out of range \[-10, 10\): {index} at position 1"):
        _kernels.gather_rows(table, np.array([0, index, 3], np.int64))
    with pytest.raises(IndexError, match=r"out of range \[-0, 0\)"):
        _kernels.gather_rows(np.zeros((0, 2), np.float32), np.array([0], np.int64))


def test_the_gather_op_takes_numpy_where_the_native_copy_does_not_apply():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((6, 5)).astype(np.float32)
    indices = rng.integers(-5, 5, (3, 4))
    token = NATIVE_THREADS.set(2)
    try:
        for data, ids, axis in [(table, indices, 0), (table, indices, 1), (table.T, indices, 0),
                                (table, indices.astype(np.int16), 0), (table, indices.T, 0)]:
            np.testing.assert_array_equal(gather([data, ids], {"axis": axis}, [None, None]),
                                          np.take(data, ids, axis=axis))
    finally:
        NATIVE_THREADS.reset(token)


def test_the_program_step_and_bad_arguments():
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    indices = np.array([[5, -1], [0, 2]], np.int64)
    program = _kernels.Program()
    out = np.empty((2, 2, 4), np.float32)
    program.gather_rows(table, indices, out)
    program.run(threads=2)
    np.testing.assert_array_equal(out, table[indices])
    indices[0, 0] = 6  # read when the program runs
    with pytest.raises(IndexError, match="6 at position 0"):
        program.run()
    with pytest.raises(ValueError, match="needs its out array"):
        program.gather_rows(table, indices, None)
    with pytest.raises(ValueError, match=r"out must be a writable C-contiguous array of the "
                                         r"table's dtype and shape \(2, 2, 4\)"):
        program.gather_rows(table, indices, np.empty((2, 2, 4), np.float64))
    with pytest.raises(TypeError, match="indices must have dtype int64 or int32, got float32"):
        _kernels.gather_rows(table, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="table must be a C-contiguous array"):
        _kernels.gather_rows(table.T, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="indices must be C-contiguous"):
        _kernels.gather_rows(table, np.zeros((2, 2), np.int64).T)
    with pytest.raises(TypeError, match="numpy.ndarrays"):
        _kernels.gather_rows([1, 2], np.zeros(2, np.int64))
