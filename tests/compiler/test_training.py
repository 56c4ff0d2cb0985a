"""Training-aware helpers: pruning masks and clamps survive fine-tuning, then the compressed
model goes through the frontend and int8 quantization within 2 points of float on digits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from digits import digit_images, top1, trained_lenet
from digits_data import train
from nimbus.compiler.frontend import from_torch
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.training import clip_for_training, finalize, prune_for_training, weight_sparsity
from nimbus.passes import DEFAULT_OPTIMIZATION, run_passes
from nimbus.runtime.artifact import write_artifact
from torch import nn


def fine_tune(model: nn.Module, epochs: int = 2) -> nn.Module:
    return train(model, epochs=epochs, lr=5e-4, seed=1)


def test_pruned_and_clipped_fine_tuning_then_int8_within_two_points():
    train_x, _, test_x, test_y = digit_images()
    model = copy.deepcopy(trained_lenet())
    with torch.no_grad():
        float_top1 = top1(model(torch.from_numpy(test_x)).numpy(), test_y)
    prune_for_training(model, 0.5, exclude=("conv1",))
    clip_for_training(model, 0.5)
    finalize(fine_tune(model))
    sparsity = weight_sparsity(model)
    largest = max(m.weight.abs().max().item() for m in model.modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert 0.45 < sparsity < 0.55 and largest <= 0.5
    graph = run_passes(from_torch(model, (torch.from_numpy(train_x[:2]),)), DEFAULT_OPTIMIZATION)
    quantized = run_passes(graph, "quantize",
                           calibration=[train_x[i:i + 64] for i in range(0, 512, 64)])
    int8_top1 = top1(interpret(quantized, {"x": test_x})["output"], test_y)
    print(f"\ndigits: float {float_top1:.2f}%, 50% pruned + clipped + int8 {int8_top1:.2f}%")
    assert int8_top1 >= float_top1 - 2.0
    weights = [v.data for v in quantized.constants.values() if v.data.ndim >= 2]
    zeros = sum(int(np.count_nonzero(w == 0)) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.45  # the sparsity survives quantization


def test_structured_and_global_pruning_and_bad_arguments():
    model = copy.deepcopy(trained_lenet())
    prune_for_training(model, 0.25, structured=True)
    finalize(model)
    channel_norms = model.conv2.weight.detach().abs().sum(dim=(1, 2, 3))
    assert int((channel_norms == 0).sum()) == 4  # 25% of 16 output channels
    other = prune_for_training(copy.deepcopy(trained_lenet()), 0.6, scope="global")
    assert abs(weight_sparsity(finalize(other)) - 0.6) < 0.01
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune_for_training(model, 1.5)
    with pytest.raises(ValueError, match="scope must be"):
        prune_for_training(model, 0.5, scope="model")
    with pytest.raises(ValueError, match="threshold must be positive"):
        clip_for_training(model, 0.0)


def test_deep_compression_recipe_is_ten_times_smaller_within_two_points():
    """Prune with masks kept during fine-tuning, share 4-bit codebooks, quantize to int8, and
    store the weights compressed in the artifact: at least 10x smaller than float32."""
    train_x, _, test_x, test_y = digit_images()
    model = copy.deepcopy(trained_lenet())
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    with torch.no_grad():
        float_top1 = top1(model(torch.from_numpy(test_x)).numpy(), test_y)
    prune_for_training(model, 0.8, exclude=("conv1",))
    finalize(fine_tune(model, epochs=3))
    graph = run_passes(from_torch(model, (torch.from_numpy(train_x[:2]),)), DEFAULT_OPTIMIZATION)
    compressed = run_passes(graph, "share-weights{bits=4},quantize",
                            calibration=[train_x[i:i + 64] for i in range(0, 512, 64)])
    int8_top1 = top1(interpret(compressed, {"x": test_x})["output"], test_y)
    weights = {name: value.data for name, value in compressed.constants.items()}
    stored = len(write_artifact({}, None, weights, compression="lzma"))
    print(f"\ndigits: float {float_top1:.2f}%, 80% pruned + 4-bit shared + int8 {int8_top1:.2f}%; "
          f"float32 parameters {float_bytes} bytes, compressed artifact {stored} bytes "
          f"({float_bytes / stored:.1f}x smaller)")
    assert int8_top1 >= float_top1 - 2.0
    assert float_bytes / stored >= 10.0
