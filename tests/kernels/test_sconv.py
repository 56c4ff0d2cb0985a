"""The float32 NHWC convolution (pack_sconv_weights, sconv2d) on every ISA path of this
machine, against a float64 reference: strides, asymmetric padding, dilation, groups,
depthwise, batch > 1, 1x1, every activation, bias and residual, thread counts, bad arguments."""

import numpy as np
import pytest
from checks import assert_matches, float_path
from nimbus.runtime import _kernels
from test_sgemm import ACTIVATIONS

ISAS = _kernels.available_isas()
RTOL = 1e-5


def conv2d_nhwc(x, w, bias=None, residual=None, activation="none", stride=(1, 1),
                padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """act(conv2d(x, w) + bias + residual) in float64 for NHWC x and OIHW w."""
    n, h, width, c = x.shape
    o, group_channels, kh, kw = w.shape
    top, left, bottom, right = padding
    padded = np.zeros((n, h + top + bottom, width + left + right, c), dtype=np.float64)
    padded[:, top:top + h, left:left + width, :] = x
    out_h = (h + top + bottom - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    out_w = (width + left + right - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((n, out_h, out_w, o), dtype=np.float64)
    group_outputs = o // groups
    w64 = w.astype(np.float64)
    for ky in range(kh):
        for kx in range(kw):
            rows = ky * dilation[0]
            cols = kx * dilation[1]
            window = padded[:, rows:rows + (out_h - 1) * stride[0] + 1:stride[0],
                            cols:cols + (out_w - 1) * stride[1] + 1:stride[1], :]
            for g in range(groups):
                taps = window[..., g * group_channels:(g + 1) * group_channels]
                weights = w64[g * group_outputs:(g + 1) * group_outputs, :, ky, kx]
                out[..., g * group_outputs:(g + 1) * group_outputs] += taps @ weights.T
    if bias is not None:
        out = out + bias
    if residual is not None:
        out = out + residual
    return ACTIVATIONS[activation](out)

# name: (N, C, H, W, O, (KH, KW), stride, padding [top, left, bottom, right], dilation, groups).
# Sizes are odd and no multiple of any block; depthwise rows have groups == C == O.
GEOMETRIES = {
    "1x1": (2, 17, 7, 3, 33, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1 stride 2": (1, 33, 17, 7, 17, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "1x1 padded": (1, 3, 3, 7, 7, (1, 1), (1, 1), (1, 0, 0, 2), (1, 1), 1),
    "3x3": (2, 17, 7, 17, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 deep": (1, 100, 9, 11, 70, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3 stride 2 asymmetric": (1, 7, 17, 33, 17, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1),
    "3x1 stride (2, 1)": (1, 7, 17, 7, 3, (3, 1), (2, 1), (2, 0, 1, 0), (1, 1), 1),
    "5x5 dilation 2": (1, 3, 17, 17, 7, (5, 5), (1, 1), (4, 3, 2, 1), (2, 2), 1),
    "7x7 stride 2": (2, 3, 33, 17, 17, (7, 7), (2, 2), (3, 3, 2, 2), (1, 1), 1),
    # Rows long enough for many register tiles per output row.
    "3x3 long rows": (2, 5, 6, 70, 9, (3, 3), (1, 1), (1, 2, 2, 1), (1, 1), 1),
    "5x3 stride 2 dilated long rows": (1, 3, 9, 100, 17, (5, 3), (2, 2), (2, 1, 2, 1), (2, 1), 1),
    "window wider than image": (1, 7, 1, 3, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "single pixel": (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "groups 2": (1, 14, 7, 17, 34, (3, 3), (1, 2), (1, 0, 1, 2), (1, 1), 2),
    "groups 3 1x1": (2, 9, 7, 3, 21, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),
    "depthwise 3x3": (2, 17, 7, 17, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 17),
    "depthwise 3x3 wide": (1, 100, 9, 7, 100, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 100),
    "depthwise 3x3 stride 2": (1, 33, 17, 33, 33, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 33),
    "depthwise 5x5 stride 2": (1, 65, 11, 13, 65, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 65),
    "depthwise 5x5 dilation 2": (1, 7, 17, 17, 7, (5, 5), (1, 1), (4, 3, 2, 1), (2, 2), 7),
    "depthwise 7x7 stride 2": (1, 3, 33, 7, 3, (7, 7), (2, 2), (3, 2, 3, 1), (1, 1), 3),
    # Rows long enough for the strips of interior pixels of the AVX-512 path.
    "depthwise 3x3 long rows": (2, 20, 5, 40, 20, (3, 3), (1, 1), (1, 2, 0, 1), (1, 1), 20),
    "depthwise 5x5 stride 2 dilated rows": (1, 24, 9, 57, 24, (5, 5), (2, 2), (2, 3, 2, 1),
                                            (1, 2), 24),
    # Few output channels: the direct kernel of the AVX-512 path (16 pixels of a row per vector)
    # where the horizontal stride is 1 and rows are wide enough, else the GEMM.
    "few outputs 5x5 LeNet": (2, 3, 32, 32, 6, (5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "few outputs 3x3 one chunk": (3, 2, 6, 9, 3, (3, 3), (1, 1), (2, 0, 1, 1), (1, 1), 1),
    "few outputs narrow rows": (2, 5, 7, 7, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "few outputs stride (2, 1) dilated": (1, 4, 13, 33, 8, (3, 5), (2, 1), (1, 3, 2, 0), (2, 2),
                                          1),
    "few outputs stride (1, 2)": (1, 3, 9, 17, 5, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 1),
    "few outputs 1x1": (2, 5, 3, 17, 7, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    # Few input channels (at most 4) into 9 to 64 outputs: the AVX-512 path's direct kernel
    # with outputs in the lanes, any stride (an image model's first layer); dilation takes the
    # GEMM. Chunks of 24 / vectors pixels overhang the rows; some kernel rows lie wholly in the
    # padding.
    "few inputs 3x3 stride 2 MobileNet stem": (2, 3, 17, 19, 32, (3, 3), (2, 2), (1, 1, 1, 1),
                                               (1, 1), 1),
    "few inputs 7x7 stride 2 ResNet stem": (1, 3, 23, 29, 64, (7, 7), (2, 2), (3, 3, 3, 3),
                                            (1, 1), 1),
    "few inputs one channel": (2, 1, 9, 30, 9, (3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 1),
    "few inputs stride 3": (1, 4, 20, 26, 40, (5, 3), (3, 3), (2, 1, 2, 0), (1, 1), 1),
    "few inputs stride (2, 1)": (1, 3, 9, 13, 48, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 1),
    "few inputs padding wider than the kernel": (1, 2, 5, 6, 17, (2, 2), (1, 2), (3, 0, 3, 4),
                                                 (1, 1), 1),
    "few inputs dilated": (1, 3, 11, 12, 20, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    # 3x3 stride 1 with at least 32 channels each side: Winograd F(2x2, 3x3) on AVX-512, whose
    # 2x2 output tiles overhang odd sizes and cross from one image to the next.
    "Winograd odd sizes": (3, 33, 7, 5, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "Winograd asymmetric padding": (2, 48, 6, 9, 35, (3, 3), (1, 1), (2, 0, 1, 2), (1, 1), 1),
    "Winograd unpadded": (1, 64, 8, 7, 64, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "Winograd one row": (2, 32, 1, 9, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "Winograd deep": (1, 520, 4, 5, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # Narrow groups (2 to 16 outputs per group, dividing 16; no more inputs per group): the
    # AVX-512 path's grouped kernel, vectors of 16 outputs over adjacent groups, the last one
    # partial; a residual takes the GEMM.
    "grouped 8 per group RegNet stride 2": (1, 48, 13, 15, 48, (3, 3), (2, 2), (1, 1, 1, 1),
                                            (1, 1), 6),
    "grouped 8 per group partial vector": (2, 40, 7, 9, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                           5),
    "grouped 4 per group ResNeXt": (1, 36, 6, 11, 36, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 9),
    "grouped 2 per group dilated": (1, 10, 9, 12, 10, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 5),
    "grouped 16 per group from 12": (1, 24, 5, 7, 32, (3, 3), (1, 2), (1, 0, 1, 2), (1, 1), 2),
    "grouped 1x1": (2, 24, 5, 6, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3),
    "grouped window wider than image": (1, 16, 1, 2, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                        2),
    # Windows that mostly read padding (at most half of their taps read the image): GEMMs over
    # the regions of output pixels that share their taps inside the image, each over those taps
    # alone. Depths of several blocks per kernel row, a stride, regions whose windows lie
    # wholly in the padding, groups.
    "tap regions dilated ASPP": (1, 40, 7, 9, 35, (3, 3), (1, 1), (5, 5, 5, 5), (5, 5), 1),
    "tap regions deep": (2, 520, 5, 6, 33, (3, 3), (1, 1), (4, 4, 4, 4), (4, 4), 1),
    "tap regions stride 2 asymmetric": (1, 9, 5, 7, 17, (5, 5), (2, 2), (4, 3, 4, 5), (1, 1), 1),
    "tap regions groups 2": (2, 8, 4, 5, 6, (3, 3), (1, 1), (3, 3, 3, 3), (3, 3), 2),
}

# Packed in the Winograd form too, which the dilated ones do not take.
WINOGRAD = [name for name in GEOMETRIES if name.startswith("Winograd")] + [
    "3x3 deep", "tap regions dilated ASPP", "tap regions deep"]
GROUPED = [name for name in GEOMETRIES if name.startswith("grouped")]
# Packed for the few-inputs kernel, which the dilated ones do not take.
FEW_INPUTS = [name for name in GEOMETRIES if name.startswith("few inputs")] + [
    "7x7 stride 2", "5x3 stride 2 dilated long rows"]


def make_problem(geometry, seed=0):
    n, c, h, w, o, (kh, kw), stride, padding, dilation, groups = geometry
    rng = np.random.default_rng([n, c, h, w, o, kh, kw, seed])
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    fan_in = c // groups * kh * kw
    weights = (rng.standard_normal((o, c // groups, kh, kw), dtype=np.float32)
               / np.sqrt(fan_in)).astype(np.float32)
    bias = rng.standard_normal(o, dtype=np.float32)
    keywords = {"stride": stride, "padding": padding, "dilation": dilation}
    reference = conv2d_nhwc(x, weights, groups=groups, **keywords)
    residual = rng.standard_normal(reference.shape, dtype=np.float32)
    return x, weights, bias, residual, groups, keywords


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_matches_the_reference(isa, name):
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES[name])
    packed = _kernels.pack_sconv_weights(w, groups, isa=isa)
    assert packed.isa == float_path(isa)
    assert packed.depthwise == (groups > 1 and groups == w.shape[0] and w.shape[1] == 1)
    assert packed.winograd == (name in WINOGRAD and packed.isa == "avx512_vnni")
    assert packed.few_inputs == (name in FEW_INPUTS and packed.isa == "avx512_vnni")
    assert packed.grouped == (name in GROUPED and packed.isa == "avx512_vnni")
    for b, r, activation in ((None, None, "none"), (bias, None, "relu"), (bias, residual, "relu6"),
                             (None, residual, "none")):
        actual = _kernels.sconv2d(x, packed, b, r, activation, **keywords)
        expected = conv2d_nhwc(x, w, b, r, activation, groups=groups, **keywords)
        assert_matches(actual, expected.astype(np.float32), rtol=RTOL,
                       name=f"{isa} {name} bias={b is not None} residual={r is not None} "
                            f"{activation}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("name", ["3x3", "depthwise 3x3 wide", "depthwise 3x3 long rows",
                                  "groups 2", "few outputs stride (2, 1) dilated",
                                  "Winograd odd sizes", "few inputs stride 3",
                                  "grouped 4 per group ResNeXt", "tap regions dilated ASPP"])
def test_every_activation(isa, activation, name):
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES[name], seed=1)
    x *= 3.0
    packed = _kernels.pack_sconv_weights(w, groups, isa=isa)
    for r in (residual, None):  # the grouped kernel takes no residual
        actual = _kernels.sconv2d(x, packed, bias, r, activation, **keywords)
        expected = conv2d_nhwc(x, w, bias, r, activation, groups=groups, **keywords)
        assert_matches(actual, expected.astype(np.float32), rtol=RTOL,
                       name=f"{isa} {name} {activation} residual={r is not None}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("name", ["3x3", "1x1", "depthwise 3x3 wide", "depthwise 3x3 long rows",
                                  "few outputs 5x5 LeNet", "few inputs 3x3 stride 2 MobileNet stem",
                                  "Winograd odd sizes", "grouped 8 per group partial vector"])
def test_nan_stays_nan(isa, activation, name):
    """A NaN input pixel makes every output that reads it NaN through relu and relu6, as in
    numpy (the vector paths once clamped it to 0). Winograd mixes a whole input tile into each
    output tile, so there it may also reach outputs that only border it."""
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES[name], seed=2)
    x[0, 1, 2, 0] = np.nan
    packed = _kernels.pack_sconv_weights(w, groups, isa=isa)
    residual = None if packed.grouped else residual  # which the grouped kernel does not take
    actual = _kernels.sconv2d(x, packed, bias, residual, activation, **keywords)
    expected = conv2d_nhwc(x, w, bias, residual, activation, groups=groups, **keywords)
    assert np.isnan(expected).any()
    if packed.winograd:
        assert np.isnan(actual[np.isnan(expected)]).all()
        return
    assert_matches(actual, expected.astype(np.float32), rtol=RTOL,
                   name=f"{isa} {name} {activation}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["3x3 deep", "1x1", "groups 2", "depthwise 3x3 long rows",
                                  "5x3 stride 2 dilated long rows", "few outputs 5x5 LeNet",
                                  "Winograd odd sizes", "few inputs 7x7 stride 2 ResNet stem",
                                  "grouped 8 per group RegNet stride 2", "tap regions deep"])
def test_thread_counts_give_identical_results(isa, name):
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES[name], seed=2)
    packed = _kernels.pack_sconv_weights(w, groups, isa=isa)
    residual = None if packed.grouped else residual  # which the grouped kernel does not take
    single = _kernels.sconv2d(x, packed, bias, residual, "silu", threads=1, **keywords)
    for threads in (2, 5):
        actual = _kernels.sconv2d(x, packed, bias, residual, "silu", threads=threads, **keywords)
        assert np.array_equal(actual, single), f"{isa} {name} threads={threads}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_channels", range(1, 10))
@pytest.mark.parametrize("width", [5, 10, 17, 18, 34])
def test_every_count_of_few_output_channels(isa, out_channels, width):
    """Each output channel count of the direct kernel and one past it, on rows (one pixel
    narrower than x) too narrow for it, of part of a chunk of 16 pixels, of one chunk, of a pair
    with one pixel in the second chunk, and of a pair and one pixel; with padding, dilation and a
    vertical stride."""
    geometry = (2, 3, 9, width, out_channels, (3, 3), (2, 1), (1, 2, 0, 1), (1, 2), 1)
    x, w, bias, residual, _, keywords = make_problem(geometry, seed=4)
    packed = _kernels.pack_sconv_weights(w, isa=isa)
    assert_calls_match(x, w, packed, keywords,
                       ((None, None, "none", 1), (bias, residual, "relu", 2),
                        (bias, None, "hardswish", 2)),
                       f"{isa} {out_channels} outputs width {width}")


def assert_calls_match(x, w, packed, keywords, calls, label):
    """sconv2d of x with each (bias, residual, activation, threads) of `calls` against the
    reference."""
    for b, r, activation, threads in calls:
        actual = _kernels.sconv2d(x, packed, b, r, activation, threads=threads, **keywords)
        expected = conv2d_nhwc(x, w, b, r, activation, **keywords)
        assert_matches(actual, expected.astype(np.float32), rtol=RTOL,
                       name=f"{label} bias={b is not None} residual={r is not None} "
                            f"{activation} threads={threads}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("in_channels", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("out_channels", [8, 9, 16, 17, 31, 33, 47, 49, 64, 65])
def test_every_vector_count_over_few_inputs(isa, in_channels, out_channels):
    """The direct kernel over few input channels for 1 to 4 vectors of outputs, full and
    partial, on rows of 25 pixels (whole chunks of 24 / vectors pixels and one pixel more), and
    the counts just outside it, which take the other kernels."""
    geometry = (2, in_channels, 8, 50, out_channels, (3, 2), (1, 2), (1, 1, 2, 0), (1, 1), 1)
    x, w, bias, residual, _, keywords = make_problem(geometry, seed=5)
    packed = _kernels.pack_sconv_weights(w, isa=isa)
    assert packed.few_inputs == (packed.isa == "avx512_vnni" and in_channels <= 4
                                 and 9 <= out_channels <= 64)
    assert_calls_match(x, w, packed, keywords,
                       ((None, None, "none", 1), (bias, residual, "relu6", 2),
                        (bias, None, "gelu", 3)),
                       f"{isa} {in_channels} -> {out_channels}")


def test_resnet_sized_layer_matches_the_reference():
    """A layer large enough for several depth blocks, row tiles and panel groups."""
    geometry = (1, 128, 14, 14, 96, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    x, w, bias, residual, _, keywords = make_problem(geometry, seed=3)
    packed = _kernels.pack_sconv_weights(w)
    actual = _kernels.sconv2d(x, packed, bias, residual, "relu", threads=2, **keywords)
    expected = conv2d_nhwc(x, w, bias, residual, "relu", **keywords)
    assert_matches(actual, expected.astype(np.float32), rtol=RTOL, name="128->96 3x3")


def test_repr_and_properties():
    packed = _kernels.pack_sconv_weights(np.zeros((6, 2, 3, 5), np.float32), groups=3,
                                         isa="portable")
    assert repr(packed) == "PackedSconvWeights(shape=(6, 2, 3, 5), groups=3, isa='portable')"
    assert (packed.out_channels, packed.in_channels, packed.kernel) == (6, 6, (3, 5))
    depthwise = _kernels.pack_sconv_weights(np.zeros((4, 1, 3, 3), np.float32), groups=4)
    assert depthwise.depthwise and "depthwise" in repr(depthwise)


# ---- bad arguments ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed():
    return _kernels.pack_sconv_weights(np.ones((4, 3, 3, 3), np.float32))


def test_weights_packed_for_unit_stride_keep_only_the_winograd_form():
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES["Winograd odd sizes"])
    both = _kernels.pack_sconv_weights(w, groups)
    only = _kernels.pack_sconv_weights(w, groups, unit_stride=True)
    assert only.winograd == both.winograd
    np.testing.assert_array_equal(_kernels.sconv2d(x, only, bias, residual, "relu", **keywords),
                                  _kernels.sconv2d(x, both, bias, residual, "relu", **keywords))
    if only.winograd:
        for geometry in ({"stride": (2, 1)}, {"dilation": (1, 2)}):
            with pytest.raises(ValueError, match="packed for stride 1 and dilation 1 only"):
                _kernels.sconv2d(x, only, bias, **geometry)
            _kernels.sconv2d(x, both, bias, **geometry)
    # Other weights are packed whole either way.
    x, w, bias, residual, groups, keywords = make_problem(GEOMETRIES["3x3"])
    packed = _kernels.pack_sconv_weights(w, groups, unit_stride=True)
    _kernels.sconv2d(x, packed, bias, stride=(2, 2))


def test_bad_weights_are_named():
    with pytest.raises(TypeError, match="w must have dtype float32, got float64"):
        _kernels.pack_sconv_weights(np.ones((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="w must be 4-D"):
        _kernels.pack_sconv_weights(np.ones((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="groups must be a positive divisor of the 4 output"):
        _kernels.pack_sconv_weights(np.ones((4, 3, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="kernel height must lie in"):
        _kernels.pack_sconv_weights(np.ones((4, 3, 0, 3), np.float32))


def test_bad_inputs_are_named(packed):
    x = np.ones((1, 5, 5, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32, got uint8"):
        _kernels.sconv2d(x.astype(np.uint8), packed)
    with pytest.raises(ValueError, match="x must be 4-D"):
        _kernels.sconv2d(np.ones((5, 5, 3), np.float32), packed)
    with pytest.raises(ValueError, match=r"x must have shape \[N, H, W, C\] with C = 3"):
        _kernels.sconv2d(np.ones((1, 5, 5, 4), np.float32), packed)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _kernels.sconv2d(np.ones((1, 3, 5, 5), np.float32).transpose(0, 2, 3, 1), packed)
    with pytest.raises(ValueError, match="does not fit the padded input"):
        _kernels.sconv2d(np.ones((1, 2, 2, 3), np.float32), packed)
    with pytest.raises(ValueError, match="stride must hold 2 integers"):
        _kernels.sconv2d(x, packed, stride=(1, 1, 1))
    with pytest.raises(ValueError, match="padding must hold 4 integers"):
        _kernels.sconv2d(x, packed, padding=(1, 1))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        _kernels.sconv2d(x, packed, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"residual must have the shape of the result "
                                         r"\(1, 3, 3, 4\)"):
        _kernels.sconv2d(x, packed, residual=np.ones((1, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        _kernels.sconv2d(x, packed, activation="elu")


def test_results_go_into_a_given_out_array(packed):
    x = np.ones((1, 5, 5, 3), np.float32)
    out = np.full((1, 3, 3, 4), np.nan, np.float32)
    assert _kernels.sconv2d(x, packed, out=out) is out
    assert_matches(out, np.full((1, 3, 3, 4), 27.0, np.float32), name="out=")
    shared = np.ones((1, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        _kernels.sconv2d(shared.reshape(-1)[:27].reshape(1, 3, 3, 3), packed,
                         padding=(1, 1, 1, 1), out=shared)
