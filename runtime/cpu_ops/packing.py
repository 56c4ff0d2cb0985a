"""Weights packed once for the native kernels, cached beside the arrays they come from."""

from __future__ import annotations

import threading
import weakref

import numpy as np


class PackedWeightCache:
    """Packed native weights, kept per weight array while that array lives.

    Only read-only arrays are cached (plan constants are read-only views of the artifact, so
    their bytes cannot change under the cache); a writable array is packed on every call. The
    key is the array object's id with a weak reference checked on lookup and a callback that
    drops the entry when the array dies, so a recycled id never finds a stale packing.
    """

    def __init__(self):
        self._entries: dict[tuple, tuple[weakref.ref, object]] = {}
        self._lock = threading.Lock()

    def get(self, w: np.ndarray, kind: str, pack, *args):
        if w.flags.writeable:
            return pack(np.ascontiguousarray(w), *args)
        key = (id(w), kind, *args)
        entry = self._entries.get(key)  # one dict read is atomic: no lock on the hot path
        if entry is not None and entry[0]() is w:
            return entry[1]
        packed = pack(np.ascontiguousarray(w), *args)
        ref = weakref.ref(w, lambda _, key=key: self._drop(key))
        with self._lock:
            self._entries[key] = (ref, packed)
        return packed

    def _drop(self, key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


PACKED_WEIGHTS = PackedWeightCache()
