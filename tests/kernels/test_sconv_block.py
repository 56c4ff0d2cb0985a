"""The inverted residual block (inverted_residual): bit for bit the three sconv2d calls it
fuses (two without expansion), on every ISA path of this machine, across strides, padding,
dilation, odd sizes, bands that split images into many pieces, small images split into a
piece per thread, residuals, activations and thread counts; bad weights and residuals are
named."""

import numpy as np
import pytest
from nimbus.runtime import _kernels

ISAS = _kernels.available_isas()
ONE = (1, 1)
NO_PADDING = (0, 0, 0, 0)

# name: (N, H, W, C, E, O, (KH, KW), stride, padding [top, left, bottom, right], dilation)
BLOCKS = {
    "MobileNetV2 stride 2": (2, 20, 18, 16, 96, 24, (3, 3), (2, 2), (1, 1, 1, 1), ONE),
    # One band at batch 1: split into a piece per thread.
    "MobileNetV2 stride 1": (1, 15, 13, 24, 144, 24, (3, 3), ONE, (1, 1, 1, 1), ONE),
    "MobileNetV2 7x7": (1, 7, 7, 16, 96, 32, (3, 3), ONE, (1, 1, 1, 1), ONE),
    "odd sizes": (3, 7, 5, 3, 17, 5, (3, 3), ONE, (1, 1, 1, 1), ONE),
    "5x5 asymmetric dilated": (1, 17, 9, 8, 40, 8, (5, 5), ONE, (4, 1, 0, 3), (2, 1)),
    "stride (2, 1) unpadded": (2, 11, 9, 5, 33, 7, (3, 3), (2, 1), NO_PADDING, ONE),
    "one row": (1, 1, 9, 4, 20, 4, (3, 3), ONE, (1, 1, 1, 1), ONE),
    # Rows of 130 x 800 floats (400 KiB): one output row per band, many bands per piece.
    "wide rows": (1, 9, 130, 4, 800, 6, (3, 3), ONE, (1, 1, 1, 1), ONE),
    # Input rows of 130 x 800 floats: one output row per band without expansion too.
    "wide input rows": (1, 7, 130, 800, 32, 6, (3, 3), ONE, (1, 1, 1, 1), ONE),
    "wide input rows, stride 2": (1, 9, 130, 800, 32, 6, (3, 3), (2, 2), (1, 1, 1, 1), ONE),
}


def block_case(name, isa, seed=0, expand=True):
    """x, packed weights, biases and geometry of block `name`; without `expand`, the block's
    depthwise layer runs over the C channels of x (no weights, bias or activation to expand)."""
    n, h, w, c, e, o, kernel, stride, padding, dilation = BLOCKS[name]
    e = e if expand else c
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    weights = [rng.standard_normal(shape).astype(np.float32) * 0.3
               for shape in ((e, c, 1, 1), (e, 1, *kernel), (o, e, 1, 1))]
    packed = [_kernels.pack_sconv_weights(weights[0], 1, isa=isa) if expand else None,
              _kernels.pack_sconv_weights(weights[1], e, isa=isa),
              _kernels.pack_sconv_weights(weights[2], 1, isa=isa)]
    biases = [rng.standard_normal(size).astype(np.float32) for size in (e, e, o)]
    if not expand:
        biases[0] = None
    return x, packed, biases, (stride, padding, dilation)


def layer_by_layer(x, packed, biases, geometry, activations, residual, threads):
    e = x if packed[0] is None else _kernels.sconv2d(
        x, packed[0], biases[0], None, activations[0], ONE, NO_PADDING, ONE, threads)
    d = _kernels.sconv2d(e, packed[1], biases[1], None, activations[1], *geometry, threads)
    return _kernels.sconv2d(d, packed[2], biases[2], residual, activations[2], ONE, NO_PADDING,
                            ONE, threads)


def fused(x, packed, biases, geometry, activations, residual, threads):
    return _kernels.inverted_residual(x, packed[0], biases[0], activations[0], packed[1],
                                      biases[1], activations[1], *geometry, packed[2], biases[2],
                                      activations[2], residual=residual, threads=threads)


@pytest.mark.parametrize("expand", [True, False], ids=["expand", "no expand"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(BLOCKS))
def test_equals_its_layers(name, isa, threads, expand):
    x, packed, biases, geometry = block_case(name, isa, expand=expand)
    activations = ("relu6" if expand else "none", "relu6", "none")
    expected = layer_by_layer(x, packed, biases, geometry, activations, None, 1)
    np.testing.assert_array_equal(fused(x, packed, biases, geometry, activations, None, threads),
                                  expected)
    residual = np.random.default_rng(1).standard_normal(expected.shape).astype(np.float32)
    np.testing.assert_array_equal(
        fused(x, packed, biases, geometry, activations, residual, threads),
        layer_by_layer(x, packed, biases, geometry, activations, residual, 1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activations", [("none", "relu", "gelu"), ("silu", "hardswish", "relu6")])
def test_every_layer_takes_its_activation(isa, activations):
    x, packed, biases, geometry = block_case("odd sizes", isa, seed=2)
    np.testing.assert_array_equal(fused(x, packed, biases, geometry, activations, None, 2),
                                  layer_by_layer(x, packed, biases, geometry, activations, None, 2))


def test_bad_weights_and_residuals_are_named():
    x, packed, biases, geometry = block_case("odd sizes", ISAS[0])
    activations = ("relu6", "relu6", "none")
    swapped = [packed[1], packed[1], packed[2]]
    with pytest.raises(ValueError, match="expand must be 1x1 weights of one group over 3"):
        fused(x, swapped, biases, geometry, activations, None, 1)
    with pytest.raises(ValueError, match="depthwise must be depthwise weights over the 17"):
        fused(x, [packed[0], packed[0], packed[2]], biases, geometry, activations, None, 1)
    with pytest.raises(ValueError, match="project must be 1x1 weights of one group over 17"):
        fused(x, [packed[0], packed[1], packed[0]], biases, geometry, activations, None, 1)
    with pytest.raises(ValueError, match="residual must have the shape of the result"):
        fused(x, packed, biases, geometry, activations, np.zeros((3, 7, 5, 4), np.float32), 1)
    with pytest.raises(ValueError, match="bias"):
        fused(x, packed, [biases[0][:3]] + biases[1:], geometry, activations, None, 1)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        fused(x, packed, biases, geometry, ("swish", "none", "none"), None, 1)
    with pytest.raises(ValueError, match="padding must hold 4"):
        fused(x, packed, biases, (ONE, (1, 1), ONE), activations, None, 1)
    x, packed, biases, geometry = block_case("odd sizes", ISAS[0], expand=False)
    with pytest.raises(ValueError, match="without expand weights takes no expand bias"):
        fused(x, packed, [np.zeros(3, np.float32)] + biases[1:], geometry, activations, None, 1)
    with pytest.raises(ValueError, match="depthwise must be depthwise weights over the 3"):
        fused(x, [None, packed[2], packed[2]], biases, geometry, ("none",) * 3, None, 1)
