"""Lowering: an optimized graph -> the execution plan and the artifact the runtime runs.

The plan is JSON data (no code): numbered value slots, the graph's inputs and outputs with
their types, the constants (by tensor name in the artifact), and a flat list of steps, each
an op of the table with JSON attributes, operand and result slots, operand types (dtype,
shape with symbolic dims as text, quantization parameters) and the slots released after it,
so an executor holds each activation only while it is live. Symbolic dims are written with
`format_dim`, which the runtime evaluates without sympy (nimbus.runtime.dims).

Pre-flight: before anything is written, every op must have a kernel for the target; otherwise
`PreflightError` lists each missing op with the source lines that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nimbus.runtime.artifact import DTYPES, valid_name, write_artifact
from nimbus.runtime.cpu_ops import TensorInfo

from .dims import evaluate, format_dim
from .dtypes import DType
from .ir import Graph, TensorType, Value
from .memory_plan import plan_memory
from .ops import cost

PLAN_FORMAT = 1
TARGETS = ("cpu", "cuda")


class PreflightError(ValueError):
    """Some ops have no kernel for the target; names each with its source lines."""

    def __init__(self, target: str, missing: dict[str, list[str]]):
        lines = [f"  {op}: used at {', '.join(sorted(set(sources))[:5])}"
                 for op, sources in sorted(missing.items())]
        super().__init__(f"no {target} kernel for {len(missing)} op(s):\n" + "\n".join(lines))
        self.target = target
        self.missing = missing


def type_json(t: TensorType) -> dict:
    """A value's type as plan data, checked by the same TensorInfo the runtime reads it with."""
    quant = t.quant
    shape = tuple(d if isinstance(d, int) else format_dim(d) for d in t.shape)
    info = TensorInfo(str(t.dtype), shape, quant.scale if quant else None,
                      quant.zero_point if quant else None, quant.axis if quant else None)
    return info.to_json()


def attrs_json(node) -> dict:
    return {name: _json_value(value) for name, value in node.attrs.items()}


def _json_value(value):
    if isinstance(value, DType):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return format_dim(value)  # a symbolic dim


def kernels_for(target: str) -> set[str]:
    """The ops the target's backend can run. On CUDA that is every op with a Triton kernel plus
    the data-movement and fallback ops the backend runs with torch (`torch_ops_for`)."""
    if target == "cpu":
        from nimbus.runtime.cpu_ops import KERNELS

        return set(KERNELS)
    from nimbus.kernels.triton import op_kernels
    from nimbus.runtime.cuda.policy import LAYOUT_OPS, REFUSED_OPS, TORCH_FALLBACK_OPS

    return (set(op_kernels()) | LAYOUT_OPS | TORCH_FALLBACK_OPS) - REFUSED_OPS


def torch_ops_for(graph: Graph) -> list[str]:
    """The ops of `graph` that the CUDA backend runs with torch rather than a Triton kernel."""
    from nimbus.kernels.triton import ops_without_kernel

    return ops_without_kernel(node.op for node in graph.nodes)


def preflight(graph: Graph, target: str) -> None:
    """Raise PreflightError unless every op (and dtype) of `graph` runs on `target`."""
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}'; expected one of {', '.join(TARGETS)}")
    available = kernels_for(target)
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in available:
            missing.setdefault(node.op, []).append(node.loc.describe())
    for value in [*graph.inputs, *graph.constants.values(),
                  *(r for n in graph.nodes for r in n.results)]:
        if str(value.type.dtype) not in DTYPES:
            producer = value.producer
            where = producer.loc.describe() if producer is not None else f"value {value.name}"
            missing.setdefault(f"{value.type.dtype} tensors", []).append(where)
    if missing:
        raise PreflightError(target, missing)


# Below this many multiply-adds at batch 1, converting to and from int8 costs about what the
# integer arithmetic saves.
TINY_LAYER_MACS = 50_000
FAST_INT8_ISAS = ("amx", "avx512_vnni")
LAYERS = {"conv2d", "fused_conv2d", "linear", "fused_linear", "qconv2d", "qlinear", "dynamic_qlinear"}
ATTENTIONS = {"attention", "qattention"}


def int8_advice(graph: Graph, isas: list[str] | None = None) -> list[dict]:
    """Per conv/linear layer and attention: whether int8 is expected to beat float on this CPU,
    and why not.

    Reasons: the CPU lacks VNNI/AMX (int8 then runs on widened AVX2 or portable code; the
    integer attention on AVX2 took about as long as the float one), the layer is
    tiny, its int8 result is converted at both ends (an int8 island between quantize and
    dequantize), or the layer is a convolution, whose int8 kernel runs on NHWC data and so pays
    a layout change around each call in an NCHW graph.
    """
    if isas is None:
        from nimbus.runtime import available_isas

        isas = available_isas()
    uses = graph.uses()
    bindings = dict.fromkeys(input_symbols(graph), 1)
    rows = []
    for node in graph.nodes:
        attention = node.op in ATTENTIONS
        if node.op not in LAYERS and not attention:
            continue
        flops, _ = cost(node.op, [o.type if o is not None else None for o in node.operands],
                        [r.type for r in node.results], node.attrs)
        macs = int(evaluate(flops, bindings)) // 2
        reasons = []
        if not any(isa in isas for isa in FAST_INT8_ISAS):
            reasons.append("no VNNI/AMX on this CPU")
        if macs < TINY_LAYER_MACS:
            reasons.append(f"tiny layer ({macs} MACs at batch 1)")
        producer = node.operands[0].producer
        consumers = [user for user in uses[node.results[0]] if user is not None]
        if (not attention and producer is not None and producer.op == "quantize" and consumers
                and all(user.op == "dequantize" for user in consumers)):
            reasons.append("int8 island: quantize before and dequantize after")
        if node.op in ("conv2d", "fused_conv2d", "qconv2d"):
            reasons.append("layout change NCHW <-> NHWC around the int8 kernel")
        name = f"attention at {node.loc}" if attention else node.operands[1].name
        rows.append({"layer": name, "op": node.op, "macs_batch_1": macs,
                     "int8": node.op.startswith(("q", "dynamic_q")),
                     "int8_expected_faster": not reasons, "reasons": reasons})
    return rows


@dataclass
class Lowered:
    """What the artifact holds: plan, weights (with quantization metadata) and the manifest's
    signature part."""

    plan: dict
    tensors: dict[str, np.ndarray]
    tensor_meta: dict[str, dict] = field(default_factory=dict)
    signature: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)


def lower(graph: Graph, target: str = "cpu") -> Lowered:
    """The execution plan of `graph` (verified, pre-flighted) for `target`."""
    graph.verify()
    preflight(graph, target)
    slots: dict[Value, int] = {}

    def slot(value: Value) -> int:
        return slots.setdefault(value, len(slots))

    inputs = [{"name": v.name, "value": slot(v), "type": type_json(v.type)} for v in graph.inputs]
    constants, tensors, meta = [], {}, {}
    for index, (constant_name, value) in enumerate(graph.constants.items()):
        # The IR takes any name; the artifact's tensors need a non-empty one without NUL.
        name = constant_name
        if not valid_name(name):
            name = f"constant.{index}"
            while name in graph.constants:
                name += "_"
        constants.append({"tensor": name, "value": slot(value), "type": type_json(value.type)})
        tensors[name] = np.ascontiguousarray(value.data)
        if value.type.quant is not None:
            meta[name] = {k: v for k, v in type_json(value.type).items() if k != "shape"}
    order = graph.topological_order()
    last_use = _last_uses(graph, order)
    steps = []
    for index, node in enumerate(order):
        steps.append({
            "op": node.op, "attrs": attrs_json(node),
            "operands": [None if o is None else slot(o) for o in node.operands],
            "results": [slot(r) for r in node.results],
            "types": [None if o is None else type_json(o.type) for o in node.operands],
            "release": sorted(slot(v) for v, last in last_use.items() if last == index),
            "source": node.loc.describe(),
        })
    outputs = [{"name": name, "value": slot(value), "type": type_json(value.type)}
               for name, value in zip(graph.output_names, graph.outputs)]
    plan = {"format": PLAN_FORMAT, "target": target, "values": len(slots), "inputs": inputs,
            "outputs": outputs, "constants": constants, "steps": steps}
    if target == "cuda":
        # The Triton configs tuned on this machine travel as data, so a served model on the
        # same kind of GPU starts without tuning.
        from nimbus.kernels.triton.autotune import cache

        plan["tuning"] = cache().export()
    memory_plan = plan_memory(graph)
    unit = {name: 1 for name in input_symbols(graph)}
    memory = {"peak_activation_bytes_batch_1": int(memory_plan.peak_bytes(unit)),
              "unshared_activation_bytes_batch_1": int(memory_plan.unshared_bytes(unit))}
    signature = {"inputs": [{"name": i["name"], **i["type"]} for i in inputs],
                 "outputs": [{"name": o["name"], **o["type"]} for o in outputs]}
    return Lowered(plan, tensors, meta, signature, memory)


def _last_uses(graph: Graph, order) -> dict[Value, int]:
    """Step index after which each activation (not an input, constant or output) is dead."""
    keep = set(graph.outputs) | set(graph.inputs) | set(graph.constants.values())
    last: dict[Value, int] = {}
    for index, node in enumerate(order):
        for value in [*node.operands, *node.results]:
            if value is not None and value not in keep:
                last[value] = index
    return last


def input_symbols(graph: Graph) -> set[str]:
    """The names of the symbolic dims of the graph's inputs (the batch, usually)."""
    names = set()
    for value in graph.inputs:
        for dim in value.type.shape:
            if not isinstance(dim, int):
                names.update(s.name for s in dim.free_symbols)
    return names


def artifact_bytes(graph: Graph, *, target: str = "cpu", pipeline: str = "",
                   compression: str = "raw", producer: str = "") -> bytes:
    """Lower `graph` and write it as a .nimbus artifact (with its IR text for inspection)."""
    from .text import print_ir

    lowered = lower(graph, target)
    manifest = {"producer": producer, "target": target, "pipeline": pipeline,
                **lowered.signature, "memory": lowered.memory}
    ir_text = print_ir(graph, locations=False).encode()
    return write_artifact(manifest, lowered.plan, lowered.tensors, {"ir": ir_text},
                          lowered.tensor_meta, compression=compression)
