"""Training-aware compression helpers for users who fine-tune in PyTorch.

The Deep Compression recipe is prune, fine-tune with the pruned weights held at zero, share,
quantize. ``prune_for_training`` and ``clip_for_training`` attach a mask and a clamp to every
conv and linear weight as PyTorch parametrizations (``torch.nn.utils.parametrize``), so a few
epochs of ordinary training keep the sparsity and the bounds (gradients of masked weights are
zero); ``finalize`` bakes them into the weights before the model goes to ``nimbus.from_torch``.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn
from torch.nn.utils import parametrize

LAYERS = (nn.Conv2d, nn.Linear)


def _layers(model: nn.Module, exclude: tuple[str, ...]):
    for name, module in model.named_modules():
        if isinstance(module, LAYERS) and not any(fnmatch.fnmatch(name, p) for p in exclude):
            yield name, module


def prune_for_training(model: nn.Module, sparsity: float, *, structured: bool = False,
                       scope: str = "layer", exclude: tuple[str, ...] = ()) -> nn.Module:
    """Zero the smallest weights (or, with ``structured``, whole output channels by L1 norm) of
    every conv and linear layer, per layer or over all of them (``scope="global"``), and keep
    them zero through training. Layers whose module path matches an ``exclude`` pattern stay."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got '{scope}'")
    layers = [module for _, module in _layers(model, exclude)]
    scores = [_importance(m.weight.detach(), structured) for m in layers]
    if scope == "global":
        everything = torch.cat([s.flatten() for s in scores])
        thresholds = [_threshold(everything, sparsity)] * len(layers)
    else:
        thresholds = [_threshold(s.flatten(), sparsity) for s in scores]
    for module, score, threshold in zip(layers, scores, thresholds):
        mask = (score > threshold).to(module.weight.dtype)
        if structured:
            mask = mask.reshape(-1, *[1] * (module.weight.dim() - 1)).expand_as(module.weight)
        parametrize.register_parametrization(module, "weight", _Mask(mask.clone()))
    return model


def _importance(weight: torch.Tensor, structured: bool) -> torch.Tensor:
    """|w| per weight, or the L1 norm per output channel."""
    return weight.abs().flatten(1).sum(dim=1) if structured else weight.abs()


def _threshold(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The score at or below which a ``sparsity`` share of the entries falls."""
    count = int(round(sparsity * scores.numel()))
    if count == 0:
        return scores.min() - 1
    return scores.kthvalue(count).values


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class _Clamp(nn.Module):
    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.clamp(-self.threshold, self.threshold)


def clip_for_training(model: nn.Module, threshold: float, *,
                      exclude: tuple[str, ...] = ()) -> nn.Module:
    """Clamp every conv and linear weight to [-threshold, threshold] in each forward."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    for _, module in _layers(model, exclude):
        parametrize.register_parametrization(module, "weight", _Clamp(threshold))
    return model


def finalize(model: nn.Module) -> nn.Module:
    """Bake masks and clamps into plain weights, ready for export."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """The share of zeros among conv and linear weights."""
    weights = [m.weight.detach() for _, m in _layers(model, ())]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0
