"""Whole models, end to end: nimbus (int8 and float) against ONNX Runtime (float and int8) and
PyTorch eager, on the same inputs and thread count, in one run.

Models (random weights; torchvision is not a dependency, so ResNet-18 and MobileNetV2 are
defined here from torchvision's blocks as tests/models holds them):
    lenet         the CNN nimbus started from (examples/cnn.py), 3x32x32
    resnet18      torchvision's ResNet-18, 3x224x224, 1000 classes
    mobilenet_v2  torchvision's MobileNetV2, 3x224x224, 1000 classes
    bert          tests/models/bert.py's BertEncoder (embeddings and one encoder layer) at
                  BERT-base sizes (hidden 768, 12 heads, FFN 3072, vocabulary 30522), sequence 128

For each model and batch (1 and 8):
    nimbus int8          nimbus.compile(model, calibration=...) -> nimbus.load -> Session.run
    nimbus float         nimbus.compile(model) -> nimbus.load -> Session.run
    onnxruntime float    torch.onnx.export(dynamo=False, opset 17), ORT_ENABLE_ALL
    onnxruntime int8     quantize_static: QDQ, per-channel s8 weights, u8 activations,
                         the same calibration batches
    pytorch eager        torch.inference_mode()
    pytorch int8         PyTorch's own int8 path: PT2E with torchao's X86InductorQuantizer
                         (static, per-channel weights, the same calibration batches), then
                         torch.compile with Inductor's freezing; skipped with the reason where
                         torchao is missing or the model does not quantize
Latency is the median of repeated runs after a warm-up run, timed in interleaved rounds (each
runtime a block of runs per round, so that other processes' load falls on all of them alike;
ORT's worker threads are given time to stop spinning before each block). Ratios are ONNX
Runtime time / nimbus time (above 1: nimbus is faster). Threads: `--threads` for ONNX Runtime
(intra-op), PyTorch and numpy's BLAS (threadpoolctl) and nimbus's native kernels (Session
threads=). Calibration data is random (normal images, random token ids with random
padding): fine for timing, meaningless for accuracy, which this benchmark does not measure.

Per model it also reports compile time, artifact size (beside the float32 parameter bytes and
the ONNX files), cold start (load the file to the first answer at batch 1), peak memory (the
resident high-water mark above the starting point while opening the file and running batch 8
once, for every runtime; for nimbus also tracemalloc's peak, i.e. Python objects and numpy
buffers) and the share of a batch-1 run that the executor's fixed cost per step accounts for,
unless batch 1 runs as one native call (a small model's native plan). The fixed cost per step
is measured once: a plan of K logical_not steps on a 1-element tensor (an op that no native
plan takes) against a plan of one; and a native plan's, from K 4x4 linear layers on one row
against one.

    python benchmarks/models.py [--threads 2] [--models lenet,resnet18,mobilenet_v2,bert]
                                [--repeats 20] [--quick] [--json FILE] [--no-pytorch-int8]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# tests/ first: its `models` package must win over this file, which is also named models.
for folder in (ROOT / "examples", ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import nimbus

RUNTIMES = ("nimbus int8", "nimbus float", "onnxruntime int8", "onnxruntime float",
            "pytorch eager", "pytorch int8")
PAIRS = (("int8", "nimbus int8", "onnxruntime int8"),
         ("float", "nimbus float", "onnxruntime float"),
         ("pytorch int8", "nimbus int8", "pytorch int8"))
BATCHES = (1, 8)
SPIN_SETTLE_SECONDS = 0.05
SEQUENCE = 128


# ---- models ---------------------------------------------------------------------------------------
def _torchvision_init(model: nn.Module) -> None:
    """torchvision's initialization for ResNet and MobileNetV2 (random weights)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class ResNet(nn.Module):
    """torchvision.models.ResNet with BasicBlock (ResNet-18: layers [2, 2, 2, 2])."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000):
        from models.resnet import BasicBlock

        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(self.inplanes, planes, stride)]
            self.inplanes = planes * BasicBlock.expansion
            stage += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
        _torchvision_init(self)
        for module in self.modules():  # torchvision initializes nn.Linear with its default
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (width 1.0, round to 8, dropout 0.2)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # expand ratio t, channels c, repeats n, stride s

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        from models.mobilenet import ConvNormActivation, InvertedResidual, make_divisible

        super().__init__()
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel,
                                                 s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2),
                                        nn.Linear(self.last_channel, num_classes))
        _torchvision_init(self)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def lenet() -> nn.Module:
    from cnn import build  # examples/cnn.py: seeded

    return build()


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return ResNet().eval()


def mobilenet_v2() -> nn.Module:
    torch.manual_seed(0)
    return MobileNetV2().eval()


BERT_VOCABULARY = 30522


def bert() -> nn.Module:
    from models.bert import BertEncoder

    torch.manual_seed(0)
    return BertEncoder(vocab_size=BERT_VOCABULARY, hidden_size=768, num_heads=12,
                       intermediate_size=3072, max_positions=512).eval()


def images(size: int):
    def make(rng: np.random.Generator, batch: int) -> list[np.ndarray]:
        return [rng.standard_normal((batch, 3, size, size), dtype=np.float32)]
    return make


def token_ids_and_padding_mask(rng: np.random.Generator, batch: int) -> list[np.ndarray]:
    ids = rng.integers(0, BERT_VOCABULARY, size=(batch, SEQUENCE), dtype=np.int64)
    lengths = rng.integers(SEQUENCE // 2, SEQUENCE + 1, size=(batch, 1))
    return [ids, (np.arange(SEQUENCE) < lengths).astype(np.int64)]


@dataclass(frozen=True)
class ModelSpec:
    factory: Callable[[], nn.Module]
    make_inputs: Callable[[np.random.Generator, int], list[np.ndarray]]
    input_names: tuple[str, ...]
    description: str


MODELS = {
    "lenet": ModelSpec(lenet, images(32), ("x",), "examples/cnn.py CNN, 3x32x32"),
    "resnet18": ModelSpec(resnet18, images(224), ("x",), "ResNet-18, 3x224x224"),
    "mobilenet_v2": ModelSpec(mobilenet_v2, images(224), ("x",), "MobileNetV2, 3x224x224"),
    "bert": ModelSpec(bert, token_ids_and_padding_mask, ("input_ids", "attention_mask"),
                      f"BERT-base-sized embeddings + 1 encoder layer, sequence {SEQUENCE}"),
}


# ---- measuring ------------------------------------------------------------------------------------
def timed_ms(call, repeats: int, min_seconds: float, max_seconds: float) -> tuple[float, int]:
    """(median ms, runs) of one call: after a warm-up call, at least `repeats` runs and
    `min_seconds`, but never past `max_seconds` once 3 runs are in."""
    samples = time_block(call, repeats, min_seconds, max_seconds, warm_up=True)
    return float(np.median(samples)) * 1e3, len(samples)


def time_block(call, repeats: int, min_seconds: float, max_seconds: float,
               warm_up: bool) -> list[float]:
    """Seconds per call over a block of calls (see timed_ms). Waits first for ONNX Runtime's
    worker threads, which spin for a while after each run, to go to sleep: they would otherwise
    hold the cores that this block needs."""
    time.sleep(SPIN_SETTLE_SECONDS)
    if warm_up:
        call()
    times: list[float] = []
    started = time.perf_counter()
    while True:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        if len(times) >= repeats and elapsed >= min_seconds:
            return times
        if len(times) >= min(3, repeats) and elapsed >= max_seconds:
            return times


def time_interleaved(calls: dict, repeats: int, min_seconds: float, max_seconds: float,
                     rounds: int, record) -> dict[str, dict]:
    """Times several calls in `rounds` rounds, each call a block of runs per round, so that a
    change in the machine's load (other processes) falls on every runtime alike rather than on
    whichever one was being timed. Per call: median, min and max ms and the number of runs."""
    samples: dict[str, list[float]] = {}
    for key, call in calls.items():  # warm-up: first-call allocations, packing, lazy setup
        if record(key, lambda call=call: (time.sleep(SPIN_SETTLE_SECONDS), call())) is not None:
            samples[key] = []
    per_round = max(1, -(-repeats // rounds))
    for number in range(rounds):
        for key in list(samples):
            block = record(key, lambda call=calls[key]: time_block(
                call, per_round, min_seconds / rounds, max_seconds / rounds, warm_up=False))
            if block is None:
                del samples[key]
            else:
                samples[key] += block
    return {key: {"median_ms": float(np.median(times)) * 1e3,
                  "min_ms": float(np.min(times)) * 1e3, "max_ms": float(np.max(times)) * 1e3,
                  "runs": len(times)} for key, times in samples.items()}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_memory(work: Callable[[], object], python_side: bool) -> dict:
    """Peak resident memory above the starting point while `work` runs (Linux: the high-water
    mark VmHWM reset through /proc/self/clear_refs), and with `python_side` the peak of
    tracemalloc (Python objects and numpy buffers; not memory-mapped weights, not native
    allocations such as packed int8 weights or ONNX Runtime's arena)."""
    _release_freed_memory()
    reset = False
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        reset = True
    before = _status_kib("VmRSS")
    if python_side:
        tracemalloc.start()
    result = work()
    traced_peak = tracemalloc.get_traced_memory()[1] if python_side else None
    if python_side:
        tracemalloc.stop()
    peak = _status_kib("VmHWM") if reset else None
    after = _status_kib("VmRSS")
    del result
    return {
        "rss_peak_delta_bytes": None if peak is None or before is None else (peak - before) * 1024,
        "rss_after_delta_bytes": None if after is None or before is None else (after - before) * 1024,
        "tracemalloc_peak_bytes": traced_peak,
    }


@contextlib.contextmanager
def quiet():
    """torch.export and the TorchScript exporter warn at length; none of it matters here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---- runtimes -------------------------------------------------------------------------------------
def ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: not the unused-initializer notes
    return options


def export_onnx(model, spec: ModelSpec, example: list[np.ndarray], path: Path) -> None:
    axes = {name: {0: "N"} for name in spec.input_names}
    axes["output"] = {0: "N"}
    with quiet():
        torch.onnx.export(model, tuple(torch.from_numpy(a) for a in example), str(path),
                          dynamo=False, input_names=list(spec.input_names),
                          output_names=["output"], dynamic_axes=axes, opset_version=17)


def quantize_onnx(float_path: Path, int8_path: Path, spec: ModelSpec,
                  calibration: list[list[np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else dict(zip(spec.input_names, batch))

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static suggests preprocessing
    try:
        quantize_static(str(float_path), str(int8_path), Batches(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(level)


def nimbus_runner(session) -> Callable[[list[np.ndarray]], object]:
    names = [spec.name for spec in session.inputs]
    return lambda arrays: session.run(dict(zip(names, arrays)))


def ort_runner(session, spec: ModelSpec) -> Callable[[list[np.ndarray]], object]:
    return lambda arrays: session.run(None, dict(zip(spec.input_names, arrays)))


def torch_runner(model) -> Callable[[list[np.ndarray]], object]:
    def run(arrays):
        with torch.inference_mode():
            return model(*(torch.from_numpy(a) for a in arrays))
    return run


def _block_forward_with_own_output_relu(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.output_relu(out + identity)


def pytorch_int8_runner(model, calibration: list[list[np.ndarray]]) -> Callable:
    """PT2E static int8 (torchao's X86InductorQuantizer) compiled by Inductor with freezing,
    which is what lowers the quantized patterns to oneDNN int8 kernels."""
    import copy
    import types

    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    inductor_config.freezing = True
    model = copy.deepcopy(model)
    # torchvision's BasicBlock calls one ReLU module twice, which the quantizer's pattern matcher
    # cannot tell apart; the copy gets a second ReLU module for the block's output (same math).
    for module in model.modules():
        if type(module).__name__ == "BasicBlock":
            module.output_relu = nn.ReLU()
            module.forward = types.MethodType(_block_forward_with_own_output_relu, module)
    example = tuple(torch.from_numpy(a) for a in calibration[0])  # batch > 1: not specialized
    dynamic = tuple({0: torch.export.Dim.AUTO} for _ in example)
    exported = torch.export.export(model, example, dynamic_shapes=dynamic).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*(torch.from_numpy(a) for a in batch))
        compiled = torch.compile(convert_pt2e(prepared))

    def run(arrays):
        with torch.no_grad():
            return compiled(*(torch.from_numpy(a) for a in arrays))
    return run


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


class Recorder:
    """Runs a stage; on failure records why (one line) and lets the benchmark go on."""

    def __init__(self, errors: dict):
        self.errors = errors

    def __call__(self, key: str, stage: Callable[[], object]):
        try:
            return stage()
        except Exception as err:  # noqa: BLE001 - any failure is reported, then skipped
            self.errors[key] = short_error(err)
            if os.environ.get("NIMBUS_BENCH_TRACEBACK"):
                traceback.print_exc()
            return None


# ---- the executor's fixed cost --------------------------------------------------------------------
class NotChain(nn.Module):
    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def forward(self, x):
        for _ in range(self.steps):
            x = torch.logical_not(x)
        return x


class LinearChain(nn.Module):
    def __init__(self, steps: int):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(4, 4) for _ in range(steps)))

    def forward(self, x):
        return self.layers(x)


def step_cost(model_of: Callable[[int], nn.Module], x: np.ndarray, steps: int, repeats: int,
              pipeline: str) -> dict:
    """The cost per plan step of a plan of `steps` steps of model_of(steps) against a plan of
    one, both compiled with `pipeline` (no fusion, so that no step goes away), from each plan's
    fastest run; ``native`` says whether both ran as one native call (runtime/native_plan.py)."""
    sessions = {}
    for count in (1, steps):
        with quiet():
            compiled = nimbus.compile(model_of(count), (torch.from_numpy(x),), pipeline=pipeline)
        sessions[count] = compiled.session()
    counts = {count: len(s.artifact.plan["steps"]) for count, s in sessions.items()}
    # Fastest runs, not medians: the two plans differ by a few microseconds in all (a native
    # plan of 50 steps), which host noise can exceed and turn negative; noise only adds time.
    ms = {count: min(time_block(lambda s=s: s.run({s.inputs[0].name: x}), repeats * 10, 0.2, 5,
                                warm_up=True)) * 1e3
          for count, s in sessions.items()}
    per_step_us = (ms[steps] - ms[1]) * 1e3 / (counts[steps] - counts[1])
    return {"plan_steps": counts[steps], "run_ms": ms[steps], "one_step_run_ms": ms[1],
            "per_step_us": per_step_us,
            "native": all(s.native_shapes for s in sessions.values())}


def executor_cost(steps: int, repeats: int) -> dict:
    """The executor's cost per plan step: logical_not steps on a 1-element tensor (their kernel
    included), which no native plan takes; and a native plan's, from 4x4 linear layers on one
    row (their GEMMs included)."""
    cost = step_cost(NotChain, np.ones((1,), np.bool_), steps, repeats, pipeline="")
    if cost["native"]:
        raise RuntimeError("logical_not joined a native plan: the executor needs another op to "
                           "measure it")
    cost["native_plan"] = step_cost(LinearChain, np.ones((1, 4), np.float32), steps, repeats,
                                    pipeline="canonicalize")
    return cost


# ---- one model ------------------------------------------------------------------------------------
def benchmark_model(name: str, options, out: Path, executor_us: float | None) -> dict:
    spec = MODELS[name]
    rng = np.random.default_rng(0)
    errors: dict[str, str] = {}
    record = Recorder(errors)
    per = {key: {} for key in RUNTIMES}  # compile, file, cold start, memory, plan per runtime
    info: dict = {"description": spec.description, "runtimes": per}
    latency = {str(b): dict.fromkeys(RUNTIMES) for b in BATCHES}
    runs = {str(b): dict.fromkeys(RUNTIMES) for b in BATCHES}
    print(f"[{name}] building", flush=True)

    model = spec.factory()
    info["float32_parameter_bytes"] = sum(p.numel() * 4 for p in model.parameters())
    calibration = [spec.make_inputs(rng, options.calibration_batch)
                   for _ in range(options.calibration_batches)]
    nimbus_calibration = [batch[0] if len(batch) == 1 else tuple(batch) for batch in calibration]
    inputs = {b: spec.make_inputs(rng, b) for b in BATCHES}
    example = tuple(torch.from_numpy(a) for a in inputs[1])

    paths = {"nimbus float": out / f"{name}.nimbus", "nimbus int8": out / f"{name}.int8.nimbus",
             "onnxruntime float": out / f"{name}.onnx",
             "onnxruntime int8": out / f"{name}.int8.onnx"}

    def compile_nimbus(key: str, with_calibration: bool):
        started = time.perf_counter()
        with quiet():
            compiled = nimbus.compile(model, example,
                                      calibration=nimbus_calibration if with_calibration else None)
        per[key]["compile_s"] = time.perf_counter() - started
        compiled.save(paths[key])
        per[key]["artifact_bytes"] = paths[key].stat().st_size
        return True

    def onnx_float():
        started = time.perf_counter()
        export_onnx(model, spec, inputs[1], paths["onnxruntime float"])
        per["onnxruntime float"]["compile_s"] = time.perf_counter() - started
        per["onnxruntime float"]["artifact_bytes"] = paths["onnxruntime float"].stat().st_size
        return True

    def onnx_int8():
        if not paths["onnxruntime float"].exists():
            raise RuntimeError("no float ONNX model to quantize")
        started = time.perf_counter()
        quantize_onnx(paths["onnxruntime float"], paths["onnxruntime int8"], spec, calibration)
        per["onnxruntime int8"]["compile_s"] = time.perf_counter() - started
        per["onnxruntime int8"]["artifact_bytes"] = paths["onnxruntime int8"].stat().st_size
        return True

    record("nimbus float", lambda: compile_nimbus("nimbus float", False))
    record("nimbus int8", lambda: compile_nimbus("nimbus int8", True))
    record("onnxruntime float", onnx_float)
    record("onnxruntime int8", onnx_int8)

    # Sessions, cold start and memory: a fresh session per try, from the file on disk.
    import onnxruntime as ort

    def open_session(key: str):
        if key.startswith("nimbus"):
            return nimbus.load(paths[key], threads=options.threads)
        return ort.InferenceSession(str(paths[key]), ort_options(options.threads),
                                    providers=["CPUExecutionProvider"])

    def runner_of(key: str, session):
        return nimbus_runner(session) if key.startswith("nimbus") else ort_runner(session, spec)

    def cold_start(key: str):
        times = []
        for _ in range(options.cold_repeats):
            _release_freed_memory()
            started = time.perf_counter()
            session = open_session(key)
            runner_of(key, session)(inputs[1])
            times.append((time.perf_counter() - started) * 1e3)
            del session
        per[key]["cold_start_ms"] = float(np.median(times))

    def memory(key: str):
        def work():
            session = open_session(key)
            runner_of(key, session)(inputs[8])
            return session
        per[key]["memory"] = measure_memory(work, python_side=key.startswith("nimbus"))

    runners: dict[str, Callable] = {}
    sessions = {}  # nimbus's, to ask afterwards which batches ran as one native call
    for key in RUNTIMES[:4]:
        if key in errors:
            continue

        def prepare(key=key):
            cold_start(key)
            memory(key)
            session = open_session(key)
            if key.startswith("nimbus"):
                sessions[key] = session
                per[key]["plan_steps"] = len(session.artifact.plan["steps"])
                memory_plan = session.manifest.get("memory", {})
                per[key]["planned_peak_activation_bytes_batch_1"] = memory_plan.get(
                    "peak_activation_bytes_batch_1")
            return runner_of(key, session)

        runner = record(key, prepare)
        if runner is not None:
            runners[key] = runner
    runners["pytorch eager"] = torch_runner(model)

    def pytorch_int8():
        started = time.perf_counter()
        with quiet():
            runner = pytorch_int8_runner(model, calibration)
            runner(inputs[1])  # Inductor compiles on the first call
        per["pytorch int8"]["compile_s"] = time.perf_counter() - started
        return runner

    if options.pytorch_int8:
        runner = record("pytorch int8", pytorch_int8)
        if runner is not None:
            runners["pytorch int8"] = runner
    record("pytorch eager memory", lambda: memory_torch(model, inputs[8], info))

    print(f"[{name}] timing", flush=True)
    spread = {str(b): dict.fromkeys(RUNTIMES) for b in BATCHES}
    for batch in BATCHES:
        calls = {f"{key} batch {batch}": (lambda r=runners[key], x=inputs[batch]: r(x))
                 for key in RUNTIMES if key in runners}
        timings = time_interleaved(calls, options.repeats, options.min_seconds,
                                   options.max_seconds, options.rounds, record)
        for key in RUNTIMES:
            timing = timings.get(f"{key} batch {batch}")
            if timing is not None:
                latency[str(batch)][key] = timing["median_ms"]
                runs[str(batch)][key] = timing["runs"]
                spread[str(batch)][key] = {"min_ms": timing["min_ms"],
                                           "max_ms": timing["max_ms"]}

    ratios = {}
    for batch in BATCHES:
        row = latency[str(batch)]
        for kind, ours, peer in PAIRS:
            if row[ours] and row[peer]:
                ratios[f"{kind} batch {batch}"] = row[peer] / row[ours]
    for key, session in sessions.items():
        native = {shapes[0][0] for shapes in session.native_shapes}
        per[key]["native_plan_batches"] = [batch for batch in BATCHES if batch in native]
    if executor_us is not None:
        for key in ("nimbus int8", "nimbus float"):
            steps = per[key].get("plan_steps")
            ms = latency["1"][key]
            # A native plan runs batch 1 without the executor's cost per step.
            if steps and ms and 1 not in per[key].get("native_plan_batches", []):
                per[key]["executor_share_batch_1"] = steps * executor_us / 1e3 / ms
    return {"info": info, "latency_ms": latency, "runs": runs, "spread_ms": spread,
            "ratios": ratios,
            "errors": errors}


def memory_torch(model, x: list[np.ndarray], info: dict) -> None:
    run = torch_runner(model)
    info["runtimes"]["pytorch eager"]["memory"] = measure_memory(lambda: run(x), python_side=False)


# ---- report ---------------------------------------------------------------------------------------
def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def print_report(results: dict, config: dict) -> None:
    print()
    print(f"models at batch {' and '.join(map(str, BATCHES))}; {config['threads']} threads for "
          f"ONNX Runtime (intra-op), PyTorch and numpy's BLAS; median ms over repeats, "
          f"timed in {config['rounds']} interleaved rounds (runs, min and max in the JSON)")
    print(f"nimbus: native int8 and float layer kernels on {config['threads']} threads, other "
          f"ops numpy (BLAS limited to {config['threads']} threads: "
          f"{config['blas_threads_limited']}); ISA path {config['isa']}")
    print(f"calibration (nimbus and ORT int8): {config['calibration_batches']} batches of "
          f"{config['calibration_batch']} random inputs; {config['cpu_count']} CPUs, load average "
          f"{config['load_average_start'][0]:.2f} at the start, {config['load_average_end'][0]:.2f} "
          f"at the end (a loaded machine penalizes multi-threaded runtimes)")
    footnotes: list[str] = []

    def cell(value, error_keys, width):
        for key in error_keys:
            if key:
                footnotes.append(key)
                return f"FAIL[{len(footnotes)}]".rjust(width)
        return _ms(value).rjust(width)

    header = (f"{'model':<13} {'batch':>5} " + " ".join(f"{r:>17}" for r in RUNTIMES)
              + f" {'ORT/nimbus int8':>15} {'ORT/nimbus float':>16} {'PT/nimbus int8':>14}")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        errors = result["errors"]
        for batch in BATCHES:
            row = result["latency_ms"][str(batch)]
            cells = []
            for key in RUNTIMES:
                failed = [f"{name} {k}: {errors[k]}" for k in (key, f"{key} batch {batch}")
                          if k in errors]
                cells.append(cell(row[key], failed[:1], 17))
            ratios = [result["ratios"].get(f"{kind} batch {batch}") for kind, _, _ in PAIRS]
            print(f"{name:<13} {batch:>5} " + " ".join(cells) + "".join(
                f" {'-' if ratio is None else f'{ratio:.2f}x':>{width}}"
                for ratio, width in zip(ratios, (15, 16, 14))))
    for number, text in enumerate(footnotes, 1):
        print(f"  [{number}] {text}")

    print()
    print("build: compile s (ORT: export; quantize_static) and file MB; float32 parameter MB")
    header = (f"{'model':<13} {'params MB':>9} {'nimbus f32':>15} {'nimbus int8':>15} "
              f"{'ORT f32':>15} {'ORT int8':>15}")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        info = result["info"]
        cells = []
        for key in RUNTIMES[:4]:
            per = info["runtimes"][key]
            seconds, size = per.get("compile_s"), per.get("artifact_bytes")
            text = "-" if seconds is None else f"{seconds:.1f}s {_mb(size)}"
            cells.append(text)
        nimbus_f, nimbus_i, ort_i, ort_f = cells[1], cells[0], cells[2], cells[3]
        print(f"{name:<13} {_mb(info['float32_parameter_bytes']):>9} {nimbus_f:>15} "
              f"{nimbus_i:>15} {ort_f:>15} {ort_i:>15}")

    print()
    print("start and memory: cold start = open the file to the first answer (batch 1), median ms;")
    print("peak RSS MB = resident high-water mark above the start while opening the file and")
    print("running batch 8 once (VmHWM after /proc/self/clear_refs; memory that the process")
    print("had freed earlier and reuses is not counted); nimbus py MB = tracemalloc peak of the")
    print("same (Python objects and numpy buffers; excludes the memory-mapped weights and native")
    print("packed int8 weights); plan steps and the executor's fixed-cost share of batch 1, or")
    print("'native' where batch 1 ran as one native call (runtime/native_plan.py)")
    header = (f"{'model':<13} {'runtime':<17} {'cold ms':>9} {'peak RSS MB':>11} "
              f"{'py MB':>7} {'steps':>6} {'exec share':>10}")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        info = result["info"]
        for key in RUNTIMES:
            per = info["runtimes"][key]
            cold, mem = per.get("cold_start_ms"), per.get("memory") or {}
            steps, share = per.get("plan_steps"), per.get("executor_share_batch_1")
            if cold is None and not mem:
                continue
            share_text = ("native" if 1 in per.get("native_plan_batches", [])
                          else "-" if share is None else f"{100 * share:.1f}%")
            print(f"{name:<13} {key:<17} {_ms(cold):>9} {_mb(mem.get('rss_peak_delta_bytes')):>11} "
                  f"{_mb(mem.get('tracemalloc_peak_bytes')):>7} {'-' if steps is None else steps:>6} "
                  f"{share_text:>10}")


# ---- main -----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 repeats, 2 calibration batches, 1 cold start")
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    parser.add_argument("--out", type=Path, default=None, help="keep the artifacts here")
    parser.add_argument("--no-pytorch-int8", dest="pytorch_int8", action="store_false",
                        help="leave out the PT2E peer (needs torchao; Inductor compiles for "
                             "minutes per model)")
    options = parser.parse_args(argv)
    names = [n.strip() for n in options.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if options.quick:
        options.repeats = options.repeats or 3
        options.min_seconds, options.max_seconds = 0.0, 2.0
        options.calibration_batches, options.calibration_batch = 2, 2
        options.cold_repeats, executor_steps, options.rounds = 1, 50, 1
    else:
        options.repeats = options.repeats or 20
        options.min_seconds, options.max_seconds = 0.5, 10.0
        options.calibration_batches, options.calibration_batch = 8, 8
        options.cold_repeats, executor_steps, options.rounds = 3, 200, 4

    torch.set_num_threads(options.threads)
    limits = contextlib.nullcontext()
    blas_limited = False
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=options.threads, user_api="blas")
        blas_limited = True
    except ImportError:
        pass

    from nimbus.runtime import _kernels

    config = {
        "threads": options.threads, "models": names, "batches": list(BATCHES),
        "sequence": SEQUENCE, "quick": options.quick, "repeats": options.repeats,
        "min_seconds": options.min_seconds, "max_seconds": options.max_seconds,
        "rounds": options.rounds,
        "calibration_batches": options.calibration_batches,
        "calibration_batch": options.calibration_batch,
        "calibration_data": "random normal images; random token ids with random padding",
        "cold_start_repeats": options.cold_repeats,
        "nimbus_native_threads": options.threads, "blas_threads_limited": blas_limited,
        "isa": _kernels.available_isas()[0], "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_start": list(os.getloadavg()),
    }
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # also quantize_static's own sessions
    config["onnxruntime"] = onnxruntime.__version__
    scratch = None if options.out else tempfile.TemporaryDirectory(prefix="nimbus-bench-models-")
    out = options.out or Path(scratch.name)  # artifacts are deleted at the end unless --out
    out.mkdir(parents=True, exist_ok=True)

    with limits, scratch or contextlib.nullcontext():
        errors: dict[str, str] = {}
        executor = Recorder(errors)("executor", lambda: executor_cost(executor_steps,
                                                                      options.repeats))
        if executor:
            native = executor["native_plan"]
            print(f"executor fixed cost: {executor['per_step_us']:.2f} us per plan step "
                  f"({executor['plan_steps']} logical_not steps on 1 element: "
                  f"{executor['run_ms']:.3f} ms; 1 step: {executor['one_step_run_ms']:.3f} ms); "
                  f"a native plan's: {native['per_step_us']:.2f} us per step "
                  f"({native['plan_steps']} 4x4 linear steps on one row: "
                  f"{native['run_ms']:.3f} ms; 1 step: {native['one_step_run_ms']:.3f} ms"
                  f"{'' if native['native'] else ', NOT native'})", flush=True)
        else:
            print(f"executor fixed cost: failed ({errors['executor']})", flush=True)
        results = {}
        for name in names:
            results[name] = benchmark_model(name, options, out,
                                            executor["per_step_us"] if executor else None)
    config["load_average_end"] = list(os.getloadavg())
    print_report(results, config)
    report = {"config": config, "executor": executor, "executor_error": errors.get("executor"),
              "artifacts": str(out) if options.out else None, "models": results}
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)
    return report


if __name__ == "__main__":
    main()
