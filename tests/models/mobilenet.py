"""MobileNet blocks as torchvision defines them: V2's inverted residual (ReLU6, depthwise 3x3,
linear bottleneck) and V3's, with hardswish and squeeze-and-excitation gated by hardsigmoid."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormActivation(nn.Sequential):
    """Conv (same padding, no bias), BatchNorm, then the activation if there is one."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: Callable[..., nn.Module] | None = nn.ReLU6):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2: expand 1x1, depthwise 3x3, project 1x1; a residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([
            ConvNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class SqueezeExcitation(nn.Module):
    """Channel gates from globally pooled features (torchvision.ops.SqueezeExcitation)."""

    def __init__(self, input_channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.activation(self.fc1(self.avgpool(x)))
        scale = self.scale_activation(self.fc2(scale))
        return scale * x


class InvertedResidualV3(nn.Module):
    """MobileNetV3: expand, depthwise k x k, optional squeeze-excitation, project."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int,
                 out_channels: int, use_se: bool, use_hardswish: bool, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        activation = nn.Hardswish if use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded_channels != input_channels:
            layers.append(ConvNormActivation(input_channels, expanded_channels, kernel_size=1,
                                             activation=activation))
        layers.append(ConvNormActivation(expanded_channels, expanded_channels, kernel, stride,
                                         groups=expanded_channels, activation=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels,
                                            make_divisible(expanded_channels // 4)))
        layers.append(ConvNormActivation(expanded_channels, out_channels, kernel_size=1,
                                         activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


def inverted_residual(seed: int = 0) -> InvertedResidual:
    torch.manual_seed(seed)
    return InvertedResidual(16, 16, stride=1, expand_ratio=6)


def inverted_residual_v3(seed: int = 0) -> InvertedResidualV3:
    torch.manual_seed(seed)
    return InvertedResidualV3(24, 5, 72, 24, use_se=True, use_hardswish=True, stride=1)
