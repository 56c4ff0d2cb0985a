"""Autotuning: each kernel offers a small config space; the best config per shape is measured
once, cached on disk, and can travel inside an artifact as plain data so that a served model
starts without tuning.

The cache is JSON, keyed by device name, kernel and shape key:

    {"format": 1, "devices": {"NVIDIA H100 80GB HBM3": {"qgemm": {"256x4096x4096": {...}}}}}

A config is a handful of integers (block sizes, warps, stages). Data read from a cache file or
an artifact is validated against the kernel's own config space: unknown kernels, names or
values that are not positive integers are refused, never passed to a compiler.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._common import interpreting

FORMAT = 1


@dataclass(frozen=True)
class Config:
    """One point of a kernel's config space."""

    blocks: tuple[tuple[str, int], ...]  # the kernel's tl.constexpr block sizes, by name
    num_warps: int = 4
    num_stages: int = 2

    def launch_options(self) -> dict:
        """Keyword arguments for a kernel launch: block sizes, num_warps and num_stages."""
        return {**dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def to_json(self) -> dict:
        return {**dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def __str__(self) -> str:
        blocks = " ".join(f"{k}={v}" for k, v in self.blocks)
        return f"{blocks} warps={self.num_warps} stages={self.num_stages}"


def config(num_warps: int = 4, num_stages: int = 2, **blocks: int) -> Config:
    return Config(tuple(sorted(blocks.items())), num_warps, num_stages)


def config_from_json(data, space: list[Config]) -> Config:
    """A config read from untrusted data; it must be one of the kernel's own `space`."""
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and type(v) is int and v > 0 for k, v in data.items()):
        raise ValueError(f"a tuned config must map names to positive integers, got {data!r}")
    fields = dict(data)
    try:
        candidate = config(fields.pop("num_warps"), fields.pop("num_stages"), **fields)
    except KeyError as missing:
        raise ValueError(f"a tuned config lacks {missing}") from None
    if candidate not in space:
        raise ValueError(f"config {candidate} is not in the kernel's config space")
    return candidate


# kernel name -> its config space, filled in by each kernel module (`register_space`)
SPACES: dict[str, list[Config]] = {}


def register_space(kernel: str, space: list[Config]) -> list[Config]:
    SPACES[kernel] = space
    return space


def _register_every_space() -> None:
    """Import every kernel module, so tuning data for any of them can be validated."""
    import importlib

    from . import KERNEL_MODULES

    for module in KERNEL_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def shape_key(*dims) -> str:
    return "x".join(str(d) for d in dims)


def default_cache_path() -> Path:
    if "NIMBUS_TUNING_CACHE" in os.environ:
        return Path(os.environ["NIMBUS_TUNING_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nimbus" / "triton-tuning.json"


class TuningCache:
    """Best configs per device, kernel and shape; thread-safe; persisted to `path` if given."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self._entries: dict[str, dict[str, dict[str, Config]]] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            try:
                self.merge(json.loads(path.read_text()))
            except (OSError, ValueError) as err:
                warnings.warn(f"ignoring unreadable tuning cache {path}: {err}", stacklevel=2)

    def get(self, device: str, kernel: str, key: str) -> Config | None:
        with self._lock:
            return self._entries.get(device, {}).get(kernel, {}).get(key)

    def put(self, device: str, kernel: str, key: str, best: Config) -> None:
        with self._lock:
            self._entries.setdefault(device, {}).setdefault(kernel, {})[key] = best
        if self.path is not None:
            self.save()

    def save(self) -> None:
        """Write atomically, so a concurrent reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                         suffix=".tmp") as out:
            json.dump(self.export(), out, indent=1, sort_keys=True)
        os.replace(out.name, self.path)

    def export(self) -> dict:
        """The cache as JSON-ready data (what an artifact stores)."""
        with self._lock:
            return {"format": FORMAT, "devices": {
                device: {kernel: {key: c.to_json() for key, c in keys.items()}
                         for kernel, keys in kernels.items()}
                for device, kernels in self._entries.items()}}

    def merge(self, data) -> None:
        """Add entries from `export()`-shaped data, validating every one of them."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"tuning data must be a dict with format {FORMAT}")
        devices = data.get("devices")
        if not isinstance(devices, dict):
            raise ValueError("tuning data lacks its 'devices' map")  # noqa: TRY004
        _register_every_space()
        parsed = {}
        for device, kernels in devices.items():
            if not isinstance(kernels, dict):
                raise ValueError(f"tuning data for device {device!r} is not a map")  # noqa: TRY004
            for kernel, keys in kernels.items():
                if kernel not in SPACES:
                    raise ValueError(f"tuning data names unknown kernel {kernel!r}")
                if not isinstance(keys, dict):
                    raise ValueError(f"tuning data for kernel {kernel!r} is not a map")  # noqa: TRY004
                for key, value in keys.items():
                    parsed.setdefault(device, {}).setdefault(kernel, {})[str(key)] = \
                        config_from_json(value, SPACES[kernel])
        with self._lock:
            for device, kernels in parsed.items():
                for kernel, keys in kernels.items():
                    self._entries.setdefault(device, {}).setdefault(kernel, {}).update(keys)


_cache: TuningCache | None = None


def cache() -> TuningCache:
    """The process-wide cache, read from `default_cache_path()` on first use."""
    global _cache
    if _cache is None:
        _cache = TuningCache(default_cache_path())
    return _cache


def device_name(tensor) -> str:
    return _device_name(tensor.device.index)


@functools.cache
def _device_name(index: int | None) -> str:
    import torch

    return torch.cuda.get_device_name(index)  # a driver query: too slow for every launch


def tuned(kernel: str, key: str, tensor, launch: Callable[[Config], object]) -> Config:
    """The best config of `kernel` for `key` on `tensor`'s device, measuring once if unknown.

    `launch(config)` runs the kernel once with that config. Under the interpreter the first
    config of the space is used and nothing is measured (timings there mean nothing).
    """
    space = SPACES[kernel]
    if interpreting():
        return space[0]
    device = device_name(tensor)
    best = cache().get(device, kernel, key)
    if best is not None:
        return best
    timings = {}
    for candidate in space:
        try:
            timings[candidate] = _device_ms(lambda c=candidate: launch(c))
        except Exception as err:  # a config can exceed shared memory or registers on a device
            if "OutOfResources" not in type(err).__name__ and "out of resource" not in str(err):
                raise
    if not timings:
        raise RuntimeError(f"no config of kernel {kernel} runs on {device} for shape {key}")
    best = min(timings, key=timings.get)
    cache().put(device, kernel, key, best)
    return best


def _device_ms(run: Callable[[], object]) -> float:
    """Median milliseconds of `run` on the device, from CUDA-graph replays.

    A kernel of a few microseconds finishes before Python launches the next one, so timing
    launched calls ranks configs by the host's launch cost (version 2 of benchmarks/gpu_notes.md
    measured 20-80 us per call for 15-20 us kernels); replays rank them by the device's own time,
    and the CUDA backend replays graphs too. Launched calls are timed only where a capture fails.
    """
    from triton.testing import do_bench, do_bench_cudagraph

    run()  # compile (and fail on resources) outside any capture
    try:
        return do_bench_cudagraph(run, rep=20, return_mode="median")
    except RuntimeError:
        return do_bench(run, warmup=5, rep=20, return_mode="median")
