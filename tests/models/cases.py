"""The test models as cases: a factory, an input maker, and the graph converted once per process.

Shared by the frontend tests and the pass tests, so each model is exported only once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models import (bert, compositions, convnext, densenet, lenet, mobilenet, resnet,
                    transformer)
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.interpreter import interpret


def images(channels: int, size: int):
    return lambda gen, batch: (torch.randn(batch, channels, size, size, generator=gen),)


def sequences(length: int, width: int):
    return lambda gen, batch: (torch.randn(batch, length, width, generator=gen),)


def token_ids_and_padding_mask(gen, batch):
    ids = torch.randint(0, 100, (batch, 7), generator=gen)
    lengths = torch.randint(2, 8, (batch, 1), generator=gen)
    return ids, (torch.arange(7) < lengths).long()


def image_and_valid_pixels(gen, batch):
    return torch.randn(batch, 3, 6, 6, generator=gen), torch.rand(batch, 6, 6, generator=gen) > 0.3


def features_and_ids(gen, batch):
    return torch.randn(batch, 5, 12, generator=gen), torch.randint(0, 10, (batch, 5), generator=gen)


@dataclass(frozen=True)
class Case:
    factory: Callable[[], nn.Module]
    make_inputs: Callable[[torch.Generator, int], tuple]
    export_batch: int = 3


CASES = {
    # A batch-1 example: the frontend must still produce a symbolic batch.
    "lenet": Case(lenet.lenet, images(3, 32), export_batch=1),
    "resnet_basic_block": Case(resnet.basic_block, images(16, 16)),
    "resnet_bottleneck": Case(resnet.bottleneck, images(32, 16)),
    "resnext_bottleneck": Case(resnet.resnext_bottleneck, images(32, 9)),
    "small_resnet": Case(resnet.small_resnet, images(3, 64)),
    "small_densenet": Case(densenet.densenet, images(3, 32)),
    "small_convnext": Case(convnext.convnext, images(3, 32)),
    "mobilenet_v2_block": Case(mobilenet.inverted_residual, images(16, 12)),
    "mobilenet_v3_block": Case(mobilenet.inverted_residual_v3, images(24, 12)),
    "bert_encoder": Case(bert.bert_encoder, token_ids_and_padding_mask),
    "transformer_post_norm": Case(transformer.post_norm_encoder, sequences(6, 32)),
    "transformer_pre_norm": Case(transformer.pre_norm_encoder, sequences(6, 32)),
    "image_and_mask": Case(compositions.image_and_mask, image_and_valid_pixels),
    "sequence_mixer": Case(compositions.sequence_mixer, features_and_ids),
    "pooling_mixer": Case(compositions.pooling_mixer, images(4, 9)),
    "segmentation_head": Case(compositions.segmentation_head, images(3, 14)),
}


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from the defaults, so BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=gen) * 0.2)


@functools.cache
def converted(name: str):
    """(model, graph) for a case, converted once and shared by the tests below."""
    case = CASES[name]
    model = case.factory()
    randomize_batch_norm(model)
    example = case.make_inputs(torch.Generator().manual_seed(1), case.export_batch)
    return model.eval(), from_torch(model, example)


def run_both(model: nn.Module, graph, inputs: tuple) -> tuple[dict, list]:
    """The graph's outputs by name and torch's outputs in order, for the same inputs."""
    feeds = {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}
    with torch.no_grad():
        expected = model(*inputs)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    return interpret(graph, feeds), [tensor.numpy() for tensor in expected]
