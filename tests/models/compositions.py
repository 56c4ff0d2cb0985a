"""Small models that combine the converted ops in ways the classic architectures do not:
several inputs and outputs, bool and int64 inputs, slicing and concatenation, symbolic-batch
tensors, pooling variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageAndMask(nn.Module):
    """An image and a bool mask of valid pixels in; class scores and masked-mean features out."""

    def __init__(self, channels: int = 8, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, image, mask):
        features = torch.relu(self.conv(image)).flatten(2)
        weights = mask.flatten(1).float().unsqueeze(1)
        pooled = (features * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
        return self.fc(pooled), pooled


class SequenceMixer(nn.Module):
    """Gated projection, a roll by slicing and concatenation, integer-derived weights, RMS
    normalization and several reductions over a [N, S, D] sequence with int64 ids [N, S]."""

    def __init__(self, dim: int = 12):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.proj = nn.Linear(dim, 2 * dim)
        self.register_buffer("order", torch.tensor([2, 0, 1, 5, 4, 3]))

    def forward(self, x, ids):
        gate, value = self.proj(x).chunk(2, dim=-1)
        mixed = torch.sigmoid(gate) * value
        rolled = torch.cat([mixed[:, 1:], mixed[:, :1]], dim=1)
        weights = ids.float() / 10.0
        weights = torch.where(ids > 4, weights, weights.pow(2)).masked_fill(ids == 0, -1.0)
        scaled = rolled * weights.unsqueeze(-1) + torch.arange(x.size(2)) * 0.01
        scaled = torch.cat([self.cls.expand(x.size(0), -1, -1), scaled], dim=1)
        normed = scaled * torch.rsqrt(scaled.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        summary = normed.sum(dim=1) + normed.amax(dim=1) - normed.amin(dim=1)
        bounded = torch.clamp(summary, -2.0, 2.0) + F.hardtanh(summary, -1.0, 0.5)
        picked = F.silu(summary.index_select(1, self.order))
        first = F.gelu(normed[:, -1], approximate="tanh")
        return torch.cat([bounded, picked, first], dim=-1)


class PoolingMixer(nn.Module):
    """Padding, a dilated grouped convolution, ceil-mode pools, adaptive pooling to 2x3, bool
    logic, a tensor whose shape follows the batch, and log-probabilities."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2)

    def forward(self, x):
        y = self.conv(F.pad(x, (1, 0, 2, 1)))
        averaged = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        maximum = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        pooled = F.adaptive_avg_pool2d(torch.cat([averaged, maximum], 1), (2, 3)).flatten(1)
        counts = torch.zeros(x.size(0), pooled.size(1)) + 1.0
        keep = (pooled > 0) & ~(pooled > 1) | (counts > 2)
        out = torch.where(keep, pooled, -pooled.abs())
        return F.log_softmax(torch.maximum(out, torch.full_like(out, -0.5)), dim=1)


class SegmentationHead(nn.Module):
    """A segmentation model's head (torchvision's FCN, DeepLabV3, LR-ASPP): features at a lower
    resolution, resized back bilinearly to the input's H and W (align_corners False and True),
    and a decoder branch upsampled by a nearest scale factor, as F.interpolate does them."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        features = torch.relu(self.down(x))
        logits = self.classifier(features)
        smooth = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        corners = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        blocky = F.interpolate(logits, scale_factor=2.0, mode="nearest")
        return smooth + corners + blocky, F.interpolate(features, scale_factor=0.75,
                                                        mode="bilinear")


def segmentation_head(seed: int = 0) -> SegmentationHead:
    torch.manual_seed(seed)
    return SegmentationHead()


def image_and_mask(seed: int = 0) -> ImageAndMask:
    torch.manual_seed(seed)
    return ImageAndMask()


def sequence_mixer(seed: int = 0) -> SequenceMixer:
    torch.manual_seed(seed)
    return SequenceMixer()


def pooling_mixer(seed: int = 0) -> PoolingMixer:
    torch.manual_seed(seed)
    return PoolingMixer()
