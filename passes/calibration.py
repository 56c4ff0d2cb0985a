"""Calibration: feed user data through the float graph and keep running statistics of the values
a pass asks about (never the activations themselves, so memory stays flat however many batches).

Observers: ``minmax`` (running extremes) and histogram-based ``percentile``, ``entropy`` (the
range minimizing the KL divergence between the value distribution and its 8-bit quantization)
and ``mse`` (the range minimizing the expected squared quantization error).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from nimbus.compiler.dims import evaluate
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Graph, Value

OBSERVERS = ("minmax", "percentile", "entropy", "mse")
HISTOGRAM_BINS = 2048
QUANT_LEVELS = 256
CANDIDATE_FRACTIONS = np.linspace(0.05, 1.0, 96)  # clipping ranges tried by entropy and mse
MAX_CLIPPED_FRACTION = 0.01  # a searched range may clip at most this share of the values


class CalibrationError(ValueError):
    """Calibration data is missing or does not fit the graph."""


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images (PNG, JPEG, ...) for a model with one NCHW image input: each image is
    converted to RGB, resized to the input's height and width, scaled to [0, 1], then
    normalized with ``mean`` and ``std`` per channel. A plain folder path means the defaults."""

    path: Path
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    batch: int = 16


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def calibration_batches(data, graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    """Input dicts from what users hand over: an iterable of dicts or arrays (a DataLoader
    works), a path to a ``.npz`` (keys are input names, or one array per batch for one input)
    or ``.npy`` file (one array, split along axis 0 into batches), or a folder of images (a
    path or an ``ImageFolder``)."""
    names = [v.name for v in graph.inputs]
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        data = ImageFolder(Path(data))
    if isinstance(data, ImageFolder):
        yield from _image_batches(data, graph)
        return
    if isinstance(data, (str, Path)):
        yield from _file_batches(Path(data), names)
        return
    if isinstance(data, Mapping):
        data = [data]
    for batch in data:
        yield _as_feed(batch, graph)


def _file_batches(path: Path, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if len(names) != 1:
            raise CalibrationError(f"a .npy file feeds one input; the graph has {names}")
        for start in range(0, len(array), 32):
            yield {names[0]: array[start:start + 32]}
        return
    with np.load(path, allow_pickle=False) as archive:
        if set(names) <= set(archive.files):
            yield {name: archive[name] for name in names}
        elif len(names) == 1:
            for key in archive.files:
                yield {names[0]: archive[key]}
        else:
            raise CalibrationError(f"{path} holds {archive.files}; expected the inputs {names}")


def _image_batches(folder: ImageFolder, graph: Graph) -> Iterator[dict[str, np.ndarray]]:
    from PIL import Image  # only this data form needs an image decoder

    if len(graph.inputs) != 1 or graph.inputs[0].type.rank != 4:
        raise CalibrationError("a folder of images feeds a graph with one NCHW image input")
    value = graph.inputs[0]
    channels, height, width = value.type.shape[1:]
    if not all(isinstance(d, int) for d in (channels, height, width)) or channels != 3:
        raise CalibrationError(f"image calibration needs a static [N,3,H,W] input, got {value.type}")
    files = sorted(p for p in Path(folder.path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"no images in {folder.path}")
    mean = np.asarray(folder.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(folder.std, np.float32).reshape(3, 1, 1)
    for start in range(0, len(files), folder.batch):
        images = []
        for path in files[start:start + folder.batch]:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((width, height), Image.BILINEAR)
            pixels = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0
            images.append((pixels - mean) / std)
        yield {value.name: np.stack(images).astype(value.type.dtype.numpy)}


def _as_feed(batch, graph: Graph) -> dict[str, np.ndarray]:
    names = [v.name for v in graph.inputs]
    if isinstance(batch, Mapping):
        feed = {name: _to_numpy(batch[name]) for name in names if name in batch}
    elif isinstance(batch, (list, tuple)) and len(batch) == len(names) and len(names) > 1:
        feed = dict(zip(names, (_to_numpy(b) for b in batch)))
    elif isinstance(batch, (list, tuple)) and len(names) == 1 and len(batch) >= 1:
        feed = {names[0]: _to_numpy(batch[0])}  # (inputs, labels) pairs from a DataLoader
    else:
        feed = {names[0]: _to_numpy(batch)} if len(names) == 1 else {}
    if set(feed) != set(names):
        raise CalibrationError(f"a calibration batch must provide {names}, got {sorted(feed)}")
    for value in graph.inputs:
        feed[value.name] = feed[value.name].astype(value.type.dtype.numpy, copy=False)
    return feed


def _to_numpy(item) -> np.ndarray:
    if hasattr(item, "detach"):  # a torch tensor, without importing torch here
        item = item.detach().cpu().numpy()
    return np.asarray(item)


def random_batches(graph: Graph, count: int = 8, batch: int = 4, seed: int = 0):
    """Random normal inputs: only when asked for explicitly, since ranges from noise are poor."""
    warnings.warn("calibrating on random data: quantization ranges will not match real inputs",
                  stacklevel=3)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        feed = {}
        for value in graph.inputs:
            shape = [evaluate(d, {"N": batch}) for d in value.type.shape]
            array = rng.standard_normal(shape)
            feed[value.name] = array.astype(value.type.dtype.numpy)
        yield feed


class Observer:
    """Running statistics of one value: extremes and a histogram that widens as needed."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.bins = bins
        self.low = np.inf
        self.high = -np.inf
        self.counts: np.ndarray | None = None

    def update(self, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float64).ravel()
        array = array[np.isfinite(array)]
        if array.size == 0:
            return
        low, high = min(self.low, array.min()), max(self.high, array.max())
        if self.counts is None or low < self.low or high > self.high:
            self._widen(low, high)
        self.counts += np.histogram(array, bins=self.bins, range=(self.low, self.high))[0]

    def _widen(self, low: float, high: float) -> None:
        # numpy needs bins of representable width: give tiny ranges a floor relative to the values
        minimum_width = max(abs(low), abs(high)) * 1e-5 + 1e-12
        if high - low < minimum_width:
            high = low + minimum_width
        fresh = np.zeros(self.bins, dtype=np.float64)
        if self.counts is not None:
            # Move each old bin's count to the new bin holding its center.
            centers = self.low + (np.arange(self.bins) + 0.5) * (self.high - self.low) / self.bins
            index = ((centers - low) / (high - low) * self.bins).astype(np.int64)
            np.add.at(fresh, np.clip(index, 0, self.bins - 1), self.counts)
        self.low, self.high, self.counts = float(low), float(high), fresh

    @property
    def seen(self) -> bool:
        return self.counts is not None

    def range(self, method: str, percentile: float = 99.99) -> tuple[float, float]:
        """The (low, high) range to quantize over, always containing 0."""
        if not self.seen:
            raise CalibrationError("no calibration data reached this value")
        if method == "minmax":
            low, high = self.low, self.high
        elif method == "percentile":
            low, high = self._percentile_range(percentile)
        elif method in ("entropy", "mse"):
            low, high = self._searched_range(method)
        else:
            raise CalibrationError(f"unknown observer '{method}' (known: {', '.join(OBSERVERS)})")
        return min(low, 0.0), max(high, 0.0)

    def _edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.bins + 1)

    def _percentile_range(self, percentile: float) -> tuple[float, float]:
        cumulative = np.cumsum(self.counts) / self.counts.sum()
        edges = self._edges()
        tail = 1.0 - percentile / 100.0
        low_bin = int(np.searchsorted(cumulative, tail, side="left"))
        high_bin = int(np.searchsorted(cumulative, 1.0 - tail, side="left"))
        low = edges[low_bin] if self.low < 0 else self.low
        return low, edges[min(high_bin + 1, self.bins)]

    def _searched_range(self, method: str) -> tuple[float, float]:
        centers = (self._edges()[:-1] + self._edges()[1:]) / 2
        total = self.counts.sum()
        best, best_score = (self.low, self.high), np.inf
        for fraction in CANDIDATE_FRACTIONS:
            low, high = min(self.low * fraction, 0.0), max(self.high * fraction, 0.0)
            clipped = self.counts[(centers < low) | (centers > high)].sum()
            if clipped > MAX_CLIPPED_FRACTION * total:
                continue  # clipping a mode (not a sparse tail) is never what the search means
            if method == "mse":
                score = _quantization_mse(centers, self.counts, low, high)
            else:
                score = _quantization_kl(centers, self.counts, low, high)
            if score < best_score:
                best, best_score = (low, high), score
        return best


def _affine(low: float, high: float) -> tuple[float, float]:
    scale = (high - low) / (QUANT_LEVELS - 1) or 1e-12
    return scale, np.clip(np.rint(-low / scale), 0, QUANT_LEVELS - 1)


def _quantization_mse(centers, counts, low, high) -> float:
    scale, zero_point = _affine(low, high)
    q = np.clip(np.rint(centers / scale) + zero_point, 0, QUANT_LEVELS - 1)
    return float(np.sum(counts * (centers - (q - zero_point) * scale) ** 2))


def _quantization_kl(centers, counts, low, high) -> float:
    """KL(P || Q): P is the histogram with outliers folded into the range's edge bins, Q is P
    merged into the quantization levels and spread back over the bins each level covers."""
    inside = (centers >= low) & (centers <= high)
    if inside.sum() < 2:
        return np.inf
    reference = counts[inside].astype(np.float64)
    reference[0] += counts[centers < low].sum()
    reference[-1] += counts[centers > high].sum()
    levels = np.array_split(np.arange(reference.size), min(QUANT_LEVELS, reference.size))
    quantized = np.zeros_like(reference)
    for level in levels:
        occupied = level[reference[level] > 0]
        if occupied.size:
            quantized[occupied] = reference[level].sum() / occupied.size
    p = reference / reference.sum()
    q = quantized / quantized.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def observe(graph: Graph, values: Iterable[Value], batches: Iterable[dict], *,
            progress: bool | None = None) -> dict[Value, Observer]:
    """Run the float graph on each batch, updating one observer per requested value."""
    observers = {value: Observer() for value in values}
    show = sys.stderr.isatty() if progress is None else progress
    batches = iter(batches)
    if show:
        from rich.progress import track

        batches = track(batches, description="calibrating", transient=True)
    seen = 0
    for feed in batches:
        result = interpret(graph, feed, keep_intermediates=True)
        arrays = result["values"]
        for value, observer in observers.items():
            observer.update(arrays[value])
        del result, arrays  # the next batch starts from nothing: memory stays flat
        seen += 1
    if seen == 0:
        raise CalibrationError("the calibration data is empty")
    return observers
