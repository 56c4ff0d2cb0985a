"""The torch frontend. Each test model is converted once with a dynamic batch; the one graph runs
in the reference interpreter at two batch sizes against torch, and is checked for constant
names, the batch symbol, source locations and the text round trip. Then: the error for
unsupported ops, dict example inputs, input and output names, and the frontend's own guards."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from checks import assert_matches
from models import compositions, lenet, resnet
from models.cases import CASES, converted, image_and_valid_pixels, run_both
from nimbus.compiler.dims import symbol
from nimbus.compiler.frontend import ConversionError, UnsupportedOpsError, from_torch
from nimbus.compiler.frontend.table import CONVERTERS, Converter
from nimbus.compiler.text import parse_ir, print_ir
from nimbus.compiler.verifier import verify
from nimbus.passes import run_passes
from torch import nn

# torch.export's own pytree code trips a deprecation torch itself has not caught up with.

MAX_RELATIVE_ERROR = 1e-5
CHECKED_BATCHES = (2, 5)


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_at_two_batch_sizes_from_one_graph(name):
    model, graph = converted(name)
    for batch in CHECKED_BATCHES:
        inputs = CASES[name].make_inputs(torch.Generator().manual_seed(batch), batch)
        actual, expected = run_both(model, graph, inputs)
        assert len(actual) == len(expected)
        for output_name, want in zip(graph.output_names, expected):
            assert_matches(actual[output_name], want, f"{name} {output_name} at batch {batch}",
                           rtol=MAX_RELATIVE_ERROR)


@pytest.mark.parametrize("name", CASES)
def test_graph_verifies_and_round_trips_through_text(name):
    _, graph = converted(name)
    verify(graph)
    text = print_ir(graph)
    constants = {constant_name: value.data for constant_name, value in graph.constants.items()}
    assert print_ir(parse_ir(text, constants)) == text


@pytest.mark.parametrize("name", CASES)
def test_weights_are_constants_named_from_the_state_dict(name):
    model, graph = converted(name)
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # a training counter no inference op reads
        assert key in graph.constants, f"{key} is not a constant of {sorted(graph.constants)}"
        np.testing.assert_array_equal(graph.constants[key].data, tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("name", CASES)
def test_batch_is_the_symbol_n(name):
    _, graph = converted(name)
    for value in graph.inputs:
        assert value.type.shape[0] == symbol("N"), f"input {value.name}: {value.type}"
        assert f"%{value.name}: {value.type.dtype}[N," in print_ir(graph).splitlines()[0]
    for value in graph.outputs:
        assert symbol("N") in getattr(value.type.shape[0], "free_symbols", ()), str(value.type)


@pytest.mark.parametrize("name", CASES)
def test_every_node_is_located_in_the_model_file(name):
    model, graph = converted(name)
    model_file = Path(inspect.getfile(type(model))).resolve()
    for node in graph.nodes:
        assert node.loc.file is not None and node.loc.line > 0, f"{node} has no source line"
        assert Path(node.loc.file).resolve() == model_file, f"{node} is not in {model_file}"


def source_line_of(function, text: str) -> int:
    """The file line number of the line of ``function`` that contains ``text``."""
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_locations_name_the_line_and_the_module():
    _, graph = converted("lenet")
    convolutions = [node for node in graph.nodes if node.op == "conv2d"]
    assert [node.loc.scope for node in convolutions] == ["conv1", "conv2"]
    assert [node.loc.line for node in convolutions] == [
        source_line_of(lenet.LeNet.forward, "self.conv1(x)"),
        source_line_of(lenet.LeNet.forward, "self.conv2(x)"),
    ]


class UsesUnsupportedOps(nn.Module):
    def forward(self, x):
        running = torch.cumsum(x, dim=1)
        flipped = torch.flip(running, [1]) + torch.flip(x, [1])
        return torch.relu(flipped)


def test_unsupported_ops_are_all_listed_once_per_line_before_conversion():
    with pytest.raises(UnsupportedOpsError) as caught:
        from_torch(UsesUnsupportedOps(), torch.randn(2, 4))
    error = caught.value
    cumsum_line = source_line_of(UsesUnsupportedOps.forward, "torch.cumsum")
    flip_line = source_line_of(UsesUnsupportedOps.forward, "torch.flip")
    assert [(op, loc.line) for op, loc in error.ops] == [
        ("aten.cumsum.default", cumsum_line), ("aten.flip.default", flip_line)]
    for _, loc in error.ops:
        assert Path(loc.file).resolve() == Path(__file__).resolve()
    file = error.ops[0][1].file
    assert str(error) == (
        f"unsupported ops: aten.cumsum.default at {file}:{cumsum_line} "
        f"(running = torch.cumsum(x, dim=1)); aten.flip.default at {file}:{flip_line} "
        f"(flipped = torch.flip(running, [1]) + torch.flip(x, [1]))")
    assert isinstance(error, ValueError)


class RelativePositionBias(nn.Module):
    """MaxViT's and Swin's bias: a table read by a constant index, and one read along axis 1
    by an index given at run time (negative indices count from the end, as in torch)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(9, 3))
        self.register_buffer("position", torch.tensor([[4, 0, 8], [-1, 2, 3]]))

    def forward(self, x, picks):
        bias = self.table[self.position.view(-1)].view(2, 3, 3).permute(2, 0, 1)
        return x[:, picks] + bias.sum()


class Masks(nn.Module):
    def forward(self, x):
        return x[x > 0] * 2


def test_indexing_by_one_integer_tensor_is_a_gather():
    model = RelativePositionBias().eval()
    x, picks = torch.randn(2, 5, 4), torch.tensor([[3, -5], [0, 4]])
    graph = from_torch(model, (x, picks))
    assert [n.op for n in graph.nodes].count("gather") == 2
    actual, expected = run_both(model, graph, (x, picks))
    assert_matches(actual[graph.output_names[0]], expected[0], "index.Tensor",
                   rtol=MAX_RELATIVE_ERROR)
    with pytest.raises(UnsupportedOpsError, match="indexing by a torch.bool tensor"):
        from_torch(Masks(), torch.randn(2, 3), dynamic_batch=False)


class Restrides(nn.Module):
    def forward(self, x):
        return torch.as_strided(x, (3, 2), (1, 3)) * 2  # x [2, 3] read transposed


class Transposes(nn.Module):
    def forward(self, x):
        return torch.as_strided(x, (3, 3), (1, 3)) * 2  # x [3, 3] read transposed


def test_as_strided_converts_only_where_it_keeps_its_inputs_elements_in_place():
    """ConvNeXt's pooled mean is restrided along axes of length 1 only (small_convnext, a test
    model, covers that); a view that reorders the elements names why it has no IR form."""
    with pytest.raises(UnsupportedOpsError) as caught:
        from_torch(Restrides(), torch.randn(2, 3), dynamic_batch=False)
    assert "as_strided to shape [3, 2], not its input's [2, 3]" in str(caught.value)
    with pytest.raises(UnsupportedOpsError) as caught:
        from_torch(Transposes(), torch.randn(3, 3), dynamic_batch=False)
    assert "as_strided with other strides than its input's along axes [0, 1]" in str(caught.value)


class ShiftedWindows(nn.Module):
    """Swin's shifted windows at a small size: a cyclic shift of the activations (roll: fmod
    of an arange, then an index), and an attention mask that slice assignments build on zeros,
    plus a cumulative sum of a buffer. The mask, the indices and the sum have no IR ops but
    depend on constants alone: they become constants."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.tensor([0.5, 1.0, -2.0, 0.25, 3.0, 1.5]))

    def forward(self, x):
        shifted = torch.roll(x, shifts=(-2, -1), dims=(1, 2))
        mask = x.new_zeros((6, 6))
        count = 0
        for rows in ((0, -3), (-3, -2), (-2, None)):
            for columns in ((0, -3), (-3, -1), (-1, None)):
                mask[rows[0]:rows[1], columns[0]:columns[1]] = count
                count += 1
        return shifted * mask + torch.cumsum(self.steps, 0)


class UnsupportedAfterManySteps(nn.Module):
    def forward(self, x):
        for _ in range(1200):
            x = x + 1.0
        return torch.cumsum(x, dim=1)


def test_ops_without_ir_form_on_constants_alone_become_constants():
    model = ShiftedWindows().eval()
    x = torch.randn(2, 6, 6)
    graph = from_torch(model, (x,))
    live = run_passes(graph, "eliminate-dead-code")
    assert sorted(n.op for n in live.nodes) == ["add", "gather", "gather", "mul"], print_ir(live)
    actual, expected = run_both(model, graph, (x,))
    assert_matches(actual[graph.output_names[0]], expected[0], "shifted windows", rtol=0)
    # Looking for a static value walks back through every input, without recursion.
    with pytest.raises(UnsupportedOpsError, match="aten.cumsum.default"):
        from_torch(UnsupportedAfterManySteps(), torch.randn(2, 3), dynamic_batch=False)


def test_dict_inputs_are_named_and_ordered_by_forward_parameters():
    model = compositions.image_and_mask()
    image, mask = image_and_valid_pixels(torch.Generator().manual_seed(0), 3)
    graph = from_torch(model, {"mask": mask, "image": image})
    assert [str(value.type) for value in graph.inputs] == ["f32[N,3,6,6]", "bool[N,6,6]"]
    assert [value.name for value in graph.inputs] == ["image", "mask"]
    assert graph.output_names == ["output0", "output1"]
    actual, expected = run_both(model, graph, (image, mask))
    for output_name, want in zip(graph.output_names, expected):
        assert_matches(actual[output_name], want, f"dict-input {output_name}",
                       rtol=MAX_RELATIVE_ERROR)


class ReshapesBySizeArithmetic(nn.Module):
    def forward(self, x):
        batch, length, width = x.shape
        rows = x.view(batch * length, width)
        pairs = x.reshape((batch * length) // 3, 3, width)
        extra = torch.ones(batch + 1, width)
        return rows.view(batch, length, width) + pairs.view(batch, length, width), extra.sum(0)


def test_size_arithmetic_becomes_symbolic_dims():
    model = ReshapesBySizeArithmetic()
    graph = from_torch(model, torch.randn(3, 6, 4))
    text = print_ir(graph)
    for attributes in ("{shape=[6*N, 4]}", "{shape=[2*N, 3, 4]}", "{shape=[N+1, 4], value=1.0"):
        assert attributes in text
    for batch in CHECKED_BATCHES:
        actual, expected = run_both(model, graph, (torch.randn(batch, 6, 4),))
        for output_name, want in zip(graph.output_names, expected):
            assert_matches(actual[output_name], want, f"{output_name} at batch {batch}",
                           rtol=MAX_RELATIVE_ERROR)


def test_static_shapes_without_dynamic_batch():
    graph = from_torch(lenet.lenet(), torch.randn(2, 3, 32, 32), dynamic_batch=False)
    assert str(graph.inputs[0].type) == "f32[2,3,32,32]"
    assert str(graph.outputs[0].type) == "f32[2,10]"


class ScalesTwice(nn.Module):
    def forward(self, x, y):
        return x * 0.5 + y * 0.5


def test_equal_scalars_share_one_constant():
    graph = from_torch(ScalesTwice(), (torch.randn(2, 3), torch.randn(2, 3)))
    assert [(str(value.type), value.data.item()) for value in graph.constants.values()] == [
        ("f32[]", 0.5)]


def test_training_flags_are_restored():
    model = resnet.basic_block()
    model.train()
    model.bn1.eval()
    from_torch(model, torch.randn(2, 16, 16, 16))
    assert model.training and model.conv1.training and not model.bn1.training


def test_a_converter_that_disagrees_with_torch_is_reported_at_its_op(monkeypatch):
    def relu_that_flattens(cx, x):
        return cx.emit("reshape", x, shape=[-1])

    monkeypatch.setitem(CONVERTERS, torch.ops.aten.relu.default, Converter(relu_that_flattens))
    with pytest.raises(ConversionError, match=r"aten\.relu\.default at .*lenet\.py:\d+: the IR "
                                              r"infers f32\[4704\*N\] but torch traced "
                                              r"f32\[N,6,28,28\]"):
        from_torch(lenet.lenet(), torch.randn(2, 3, 32, 32))
