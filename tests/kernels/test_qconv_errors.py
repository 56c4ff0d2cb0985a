"""Bad arguments of the int8 convolutions raise errors that name the argument."""

import re

import numpy as np
import pytest
from nimbus.runtime import pack_conv_weights, qconv2d, qconv2d_f32, qconv2d_s32

MAX_DEPTH = int(np.iinfo(np.int32).max) // (255 * 128)

X = np.zeros((1, 5, 5, 4), dtype=np.uint8)
W = np.zeros((6, 2, 3, 3), dtype=np.int8)
PACKED = pack_conv_weights(W, groups=2)
DEPTHWISE = pack_conv_weights(np.zeros((4, 1, 3, 3), dtype=np.int8), groups=4)
BIAS = np.zeros(6, dtype=np.int32)
SCALE = np.ones(6, dtype=np.float32)
SHARED = np.zeros(200, dtype=np.uint8)  # activations and a result in one buffer

# name -> (packing call, exception, message)
BAD_WEIGHTS = {
    "w not an array": (lambda: pack_conv_weights([[[[1]]]]), TypeError,
                       "w must be a numpy.ndarray"),
    "w wrong dtype": (lambda: pack_conv_weights(W.astype(np.uint8)), TypeError,
                      "w must have dtype int8, got uint8"),
    "w 2-D": (lambda: pack_conv_weights(W[0, 0]), ValueError,
              "w must be 4-D [O, I / groups, KH, KW], got 2-D shape (3, 3)"),
    "w not contiguous": (lambda: pack_conv_weights(W[:, :, ::2]), ValueError,
                         "w must be C-contiguous"),
    "groups zero": (lambda: pack_conv_weights(W, groups=0), ValueError,
                    "groups must be a positive divisor of the 6 output channels, got 0"),
    "groups not a divisor": (lambda: pack_conv_weights(W, groups=4), ValueError,
                             "groups must be a positive divisor of the 6 output channels, got 4"),
    "empty kernel": (lambda: pack_conv_weights(np.zeros((6, 2, 0, 3), dtype=np.int8)),
                     ValueError, "w must have a kernel of at least 1x1, got shape (6, 2, 0, 3)"),
    "window too deep": (lambda: pack_conv_weights(np.zeros((1, MAX_DEPTH // 9 + 1, 3, 3),
                                                           dtype=np.int8)),
                        ValueError, f"is larger than {MAX_DEPTH}"),
    "unknown isa": (lambda: pack_conv_weights(W, 2, "sse9"), ValueError,
                    "unknown ISA path 'sse9'"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_bad_weights_raise_named_errors(case):
    call, exception, message = BAD_WEIGHTS[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()


def requantize_with(**changes):
    arguments = {"x": X, "packed": PACKED, "a_zero_point": 0, "bias": BIAS, "multiplier": SCALE,
                 "out_zero_point": 0, "lo": 0, "hi": 255, "out_dtype": "u8"}
    arguments.update(changes)
    return lambda: qconv2d(**arguments)


# name -> (convolution call, exception, message)
BAD_CALLS = {
    "x not an array": (requantize_with(x=[[1]]), TypeError, "x must be a numpy.ndarray, got list"),
    "x wrong dtype": (requantize_with(x=X.astype(np.int16)), TypeError,
                      "x must have dtype uint8 or int8, got int16"),
    "x 3-D": (requantize_with(x=X[0]), ValueError,
              "x must be 4-D [N, H, W, C], got 3-D shape (5, 5, 4)"),
    "x NCHW": (requantize_with(x=np.zeros((1, 4, 5, 5), dtype=np.uint8)), ValueError,
               ("x must have shape [N, H, W, C] with C = 4 (the input channels of the packed "
                "weights), got shape (1, 4, 5, 5)")),
    "x not contiguous": (requantize_with(x=np.zeros((1, 5, 5, 8), dtype=np.uint8)[..., ::2]),
                         ValueError, "x must be C-contiguous"),
    "u8 zero point": (requantize_with(a_zero_point=256), ValueError,
                      "a_zero_point must lie in the uint8 range [0, 255], got 256"),
    "s8 zero point": (requantize_with(x=X.view(np.int8), a_zero_point=128), ValueError,
                      "a_zero_point must lie in the int8 range [-128, 127], got 128"),
    "stride length": (requantize_with(stride=(1, 1, 1)), ValueError,
                      "stride must hold 2 integers, got 3"),
    "stride zero": (requantize_with(stride=(0, 1)), ValueError,
                    "stride values must lie in the range [1, 16777216], got 0"),
    "padding length": (requantize_with(padding=(1, 1)), ValueError,
                       "padding must hold 4 integers, got 2"),
    "padding negative": (requantize_with(padding=(0, -1, 0, 0)), ValueError,
                         "padding values must lie in the range [0, 16777216], got -1"),
    "dilation zero": (requantize_with(dilation=(1, 0)), ValueError,
                      "dilation values must lie in the range [1, 16777216], got 0"),
    "stride not integers": (requantize_with(stride="ab"), TypeError, "incompatible"),
    "window too large": (
        requantize_with(dilation=(3, 1)), ValueError,
        "the 3x3 kernel with dilation (3, 1) does not fit the padded input of 5x5"),
    "bias length": (requantize_with(bias=BIAS[:3]), ValueError,
                    "bias must have shape (6,), one value per output channel, got shape (3,)"),
    "multiplier not finite": (requantize_with(multiplier=np.full(6, np.nan, dtype=np.float32)),
                              ValueError, "multiplier must be finite"),
    "out dtype": (requantize_with(out_dtype="u16"), ValueError,
                  "out_dtype must be 'u8' or 's8', got 'u16'"),
    "hi below lo": (requantize_with(lo=10, hi=9), ValueError,
                    "hi must not be less than lo = 10, got 9"),
    "threads zero": (requantize_with(threads=0), ValueError, "threads must be at least 1, got 0"),
    "out wrong shape": (requantize_with(out=np.zeros((1, 6, 3, 3), dtype=np.uint8)), ValueError,
                        "out must have shape (1, 3, 3, 6), got shape (1, 6, 3, 3)"),
    "out wrong dtype": (requantize_with(out=np.zeros((1, 3, 3, 6), dtype=np.int8)), TypeError,
                        "out must have dtype uint8, got int8"),
    "out read-only": (requantize_with(out=np.frombuffer(bytes(54), np.uint8).reshape(1, 3, 3, 6)),
                      ValueError, "out must be writable"),
    "out shares x": (requantize_with(x=SHARED[:100].reshape(1, 5, 5, 4),
                                     out=SHARED[46:100].reshape(1, 3, 3, 6)), ValueError,
                     "out must not share memory with x"),
    "f32 scale length": (lambda: qconv2d_f32(X, PACKED, 0, None, SCALE[:2]), ValueError,
                         "scale must have shape (6,)"),
    "s32 depthwise channels": (lambda: qconv2d_s32(np.zeros((1, 5, 5, 3), np.uint8), DEPTHWISE),
                               ValueError, "x must have shape [N, H, W, C] with C = 4"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_named_errors(case):
    call, exception, message = BAD_CALLS[case]
    with pytest.raises(exception, match=re.escape(message)):
        call()
