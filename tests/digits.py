"""A real image task for accuracy tests: the example's digits data (examples/digits_data.py) and
the origin CNN trained on it in a few seconds (seeded, so runs are repeatable)."""

from __future__ import annotations

import functools

from digits_data import digit_images, top1, train
from torch import nn

from models import lenet

__all__ = ["digit_images", "top1", "trained_lenet"]


@functools.cache
def trained_lenet(epochs: int = 8) -> nn.Module:
    return train(lenet.lenet(), epochs=epochs)
