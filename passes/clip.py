"""clip: clamp layer weights to [-t, t], with t given or chosen from the weights."""

from __future__ import annotations

import numpy as np

from nimbus.compiler.ir import Graph

from .layers import WEIGHT_LAYERS, weight_layers
from .manager import PassContext, PassFailure
from .quantize import WEIGHT_LEVELS
from .registry import register_pass

METHODS = ("percentile", "std", "mse")
MSE_CANDIDATES = 100  # thresholds tried between half the largest |w| and the largest


def _int8_error(rows: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Squared error per row of clipping to [-t, t] and rounding to symmetric int8 at scale
    t / 127, against the unclipped weights."""
    scales = thresholds / WEIGHT_LEVELS
    clipped = np.clip(rows, -thresholds, thresholds)
    decoded = np.rint(clipped / np.where(scales > 0, scales, 1.0)) * scales
    return np.sum((decoded - rows) ** 2, axis=1)


def thresholds_of(rows: np.ndarray, method: str, percentile: float, k: float) -> np.ndarray:
    """One threshold per row of weights ([rows, 1]; one row per tensor or per output channel)."""
    magnitudes = np.abs(rows)
    if method == "percentile":
        return np.percentile(magnitudes, percentile, axis=1, keepdims=True)
    if method == "std":
        return k * np.sqrt(np.mean(rows ** 2, axis=1, keepdims=True))
    peaks = magnitudes.max(axis=1, keepdims=True)
    fractions = np.linspace(0.5, 1.0, MSE_CANDIDATES)
    errors = np.stack([_int8_error(rows, fraction * peaks) for fraction in fractions], axis=1)
    return fractions[errors.argmin(axis=1)][:, None] * peaks


@register_pass("clip")
def clip(graph: Graph, ctx: PassContext, *, threshold: float = 0.0, method: str = "percentile",
         percentile: float = 99.9, k: float = 3.0, per_channel: bool = False,
         exclude: str = "") -> bool:
    """Clamp the weights of every conv, linear and constant-operand matmul layer to [-t, t], so
    that rare outliers no longer stretch an int8 scale (run it before quantize, or with
    clip_for_training's threshold before fine-tuning). `threshold` gives t; otherwise t is chosen
    per weight tensor, or per output channel with `per-channel`, by `method`: ``percentile``
    (that percentile of |w|), ``std`` (k standard deviations about zero, i.e. k times the root
    mean square, since the range is symmetric about zero), or ``mse`` (of 100 thresholds between
    half the largest |w| and the largest, the one whose clipped weights, rounded to symmetric
    int8 at scale t/127, are closest to the original weights in squared error). Statistics count
    the weights clipped, per layer and in all, and the mean and largest change of a clipped
    weight. Activation ranges are quantize's calibration, not this pass's job.

    Options:
    threshold: clip to [-threshold, threshold]; 0 chooses t by method
    method: percentile, std or mse
    percentile: the percentile of |w| kept by method=percentile
    k: standard deviations (about zero) kept by method=std
    per-channel: choose t per output channel instead of per tensor
    exclude: comma-separated name patterns (weights or module paths) left unclipped
    """
    if threshold < 0:
        raise PassFailure(f"threshold must be positive (or 0 to choose it by method), got {threshold}")
    if method not in METHODS:
        raise PassFailure(f"method must be {', '.join(METHODS)}, got '{method}'")
    if not 0 < percentile <= 100:
        raise PassFailure(f"percentile must be in (0, 100], got {percentile}")
    if k <= 0:
        raise PassFailure(f"k must be positive, got {k}")
    total_change = 0.0
    changed = False
    for weight, layers in weight_layers(graph, ctx, exclude).items():
        data = weight.data.astype(np.float64)
        channels = np.moveaxis(data, WEIGHT_LAYERS[layers[0].op], 0)
        rows = channels.reshape(channels.shape[0] if per_channel else 1, -1)
        if threshold > 0:
            limits = np.full((rows.shape[0], 1), threshold)
        else:
            limits = thresholds_of(rows, method, percentile, k)
        change = np.abs(rows) - limits
        clipped = int(np.count_nonzero(change > 0))
        if not clipped:
            continue
        clamped = np.clip(rows, -limits, limits).reshape(channels.shape)
        # a new array: graph copies share constant arrays
        weight.data = np.ascontiguousarray(np.moveaxis(clamped, 0, WEIGHT_LAYERS[layers[0].op]),
                                           dtype=weight.data.dtype)
        for layer in layers:
            ctx.touched(layer)
        ctx.count("weights-clipped", clipped)
        ctx.count(f"weights-clipped: {weight.name}", clipped)
        total_change += float(change[change > 0].sum())
        ctx.stats["max-abs-change"] = max(ctx.stats["max-abs-change"], float(change.max()))
        changed = True
    if changed:
        ctx.stats["mean-abs-change"] = total_change / ctx.stats["weights-clipped"]
    return changed
