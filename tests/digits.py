"""A real image task for accuracy tests: scikit-learn's handwritten digits, upsampled to 32x32
RGB, and the origin CNN trained on it in a few seconds (seeded, so runs are repeatable)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from models import lenet


@functools.cache
def digit_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images are f32 [n, 3, 32, 32]."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 8x8 in [0, 1]
    images = np.kron(images, np.ones((4, 4), np.float32))  # nearest upsampling to 32x32
    images = np.repeat(images[:, None], 3, axis=1)
    images = (images - 0.5) / 0.5
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], digits.target[order].astype(np.int64)
    split = int(0.8 * len(images))
    return images[:split], labels[:split], images[split:], labels[split:]


@functools.cache
def trained_lenet(epochs: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = lenet.lenet()
    train_x, train_y, _, _ = digit_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)
