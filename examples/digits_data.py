"""A real image data set that a package ships: scikit-learn's handwritten digits, upsampled to
32x32 RGB for the example CNN, split 80/20 (seeded, so runs are repeatable)."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def digit_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images are f32 [n, 3, 32, 32]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 8x8 in [0, 1]
    images = np.kron(images, np.ones((4, 4), np.float32))  # nearest upsampling to 32x32
    images = np.repeat(images[:, None], 3, axis=1)
    images = (images - 0.5) / 0.5
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], digits.target[order].astype(np.int64)
    split = int(0.8 * len(images))
    return images[:split], labels[:split], images[split:], labels[split:]


def train(model, epochs: int = 8, lr: float = 2e-3, seed: int = 0):
    """Train `model` on the training split with Adam (a few seconds on a CPU); returns it in
    eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    train_x, train_y, _, _ = digit_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(axis=1) == labels).mean() * 100.0)
