"""The ``nimbus`` command line. Each command imports the compiler only when it runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="nimbus: compile PyTorch models into small, fast, verified artifacts for cloud inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _load_factory(spec: str):
    """Import ``path/to/file.py:factory`` and return the factory callable."""
    path_text, _, factory_name = spec.rpartition(":")
    if not path_text or not factory_name:
        _fail(f"expected FILE.py:FACTORY, got '{spec}'")
    path = Path(path_text)
    if not path.is_file():
        _fail(f"no such file: {path}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))  # let the model file import its neighbours
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        _fail(f"{path} has no callable '{factory_name}'")
    return factory


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        _fail(f"--input-shape takes comma-separated integers, got '{text}'")
    if any(d < 1 for d in shape):
        _fail(f"--input-shape dims must be positive, got '{text}'")
    return shape


@app.command("import")
def import_model(
    spec: str = typer.Argument(..., help="Model factory as FILE.py:FUNCTION returning an nn.Module."),
    input_shape: List[str] = typer.Option(..., "--input-shape", "-s",
                                          help="Shape of one input, e.g. 1,3,32,32 (repeat per input)."),
    input_dtype: List[str] = typer.Option([], "--input-dtype",
                                          help="dtype per input (f32, i64, ...); default f32."),
    static_batch: bool = typer.Option(False, "--static-batch",
                                      help="Keep the batch size fixed instead of symbolic N."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the IR (.nir)."),
):
    """Import a PyTorch model through torch.export and write its IR text (and weights)."""
    from nimbus.compiler.text import save_ir

    graph = _import_graph(spec, input_shape, input_dtype, static_batch)
    save_ir(graph, output)
    typer.echo(f"wrote {output} ({len(graph.nodes)} nodes, {len(graph.constants)} constants)")


def _import_graph(spec: str, input_shape: List[str], input_dtype: List[str], static_batch: bool):
    """The IR graph of the model a factory returns, traced with example inputs of these shapes."""
    import torch

    from nimbus.compiler.dtypes import DType
    from nimbus.compiler.frontend import from_torch

    shapes = [_parse_shape(s) for s in input_shape]
    if input_dtype and len(input_dtype) != len(shapes):
        _fail(f"{len(input_dtype)} --input-dtype values for {len(shapes)} inputs")
    dtypes = [DType.parse(d).numpy for d in input_dtype] if input_dtype else ["float32"] * len(shapes)
    examples = tuple(torch.from_numpy(_example_array(shape, dtype))
                     for shape, dtype in zip(shapes, dtypes))
    module = _load_factory(spec)()
    return from_torch(module, examples, dynamic_batch=not static_batch)


def _example_array(shape, dtype):
    import numpy as np

    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


@app.command()
def show(
    path: Path = typer.Argument(..., help="IR file written by `nimbus import`."),
    batch: int = typer.Option(1, "--batch", "-b", help="Value of the batch dim N for the table."),
    ir: bool = typer.Option(True, "--ir/--no-ir", help="Print the IR text before the table."),
    locations: bool = typer.Option(False, "--locations/--no-locations",
                                   help="Include source locations in the IR text."),
):
    """Print a model's IR, then a table of every node: output shape, parameters, FLOPs."""
    from rich.console import Console
    from rich.table import Table

    from nimbus.compiler.summary import node_costs, symbol_names
    from nimbus.compiler.text import load_ir, print_ir

    if not path.is_file():
        _fail(f"no such file: {path}")
    graph = load_ir(path)
    console = Console()
    if ir:
        typer.echo(print_ir(graph, locations=locations))
    bindings = {name: batch for name in symbol_names(graph)}
    rows = node_costs(graph, bindings)
    bound = ", ".join(f"{k}={v}" for k, v in bindings.items())
    table = Table(title=f"{graph.name}" + (f" ({bound})" if bound else ""))
    for column in ("#", "op", "output shape", "params", "MFLOPs", "source"):
        table.add_column(column, justify="right" if column in ("#", "params", "MFLOPs") else "left")
    for row in rows:
        table.add_row(str(row.index), row.op, row.shapes, f"{row.parameters:,}",
                      f"{row.flops / 1e6:,.3f}", row.source)
    table.add_row("", "total", "", f"{sum(r.parameters for r in rows):,}",
                  f"{sum(r.flops for r in rows) / 1e6:,.3f}", "", style="bold")
    console.print(table)


@app.command()
def passes():
    """List every registered pass with its options and description."""
    from nimbus.passes import all_passes

    for info in all_passes():
        typer.secho(info.name, bold=True)
        typer.echo(f"  {info.description}")
        for option in info.options.values():
            default = option.format(option.default)
            typer.echo(f"  {option.name}: {option.type.__name__} = {default}"
                       + (f"  ({option.doc})" if option.doc else ""))
        typer.echo("")


@app.command()
def opt(
    path: Path = typer.Argument(..., help="Input IR file (.nir)."),
    pipeline: Optional[str] = typer.Option(
        None, "--pipeline", "-p",
        help='Pass pipeline, e.g. "fold-batchnorm,fuse{activations=true}"; default: the standard '
             'optimization pipeline.'),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Where to write the result; stdout if omitted."),
    print_ir_after: List[str] = typer.Option([], "--print-ir-after",
                                             help="Print the IR after this pass (or 'all')."),
    print_ir_before: List[str] = typer.Option([], "--print-ir-before",
                                              help="Print the IR before this pass (or 'all')."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Verify after every pass."),
    statistics: bool = typer.Option(True, "--stats/--no-stats",
                                    help="Print per-pass timing and statistics to stderr."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="Calibration data (.npz or .npy) for passes that need it."),
    ledger: Optional[Path] = typer.Option(
        None, "--ledger", help="Also measure every pass against the float graph on the "
                               "calibration data and write the accuracy ledger (JSON) here."),
):
    """Run a pass pipeline over an IR file."""
    from nimbus.compiler.text import load_ir, print_ir, save_ir
    from nimbus.passes import DEFAULT_OPTIMIZATION, PassError, PassManager, PipelineError
    from nimbus.passes.calibration import CalibrationError
    from nimbus.passes.ledger import build_ledger

    if not path.is_file():
        _fail(f"no such file: {path}")
    if ledger is not None and calibration is None:
        _fail("--ledger needs --calibration data to measure on")
    graph = load_ir(path)
    data = {"calibration": calibration} if calibration is not None else {}
    try:
        if ledger is not None:
            graph, accounts = build_ledger(graph, pipeline or DEFAULT_OPTIMIZATION, calibration)
            accounts.save(ledger)
            typer.echo(accounts.table(), err=True)
        else:
            manager = PassManager(pipeline or DEFAULT_OPTIMIZATION, verify=verify,
                                  print_ir_after=print_ir_after,
                                  print_ir_before=print_ir_before, data=data)
            manager.run(graph)
            if statistics:
                typer.echo(manager.report.table(), err=True)
    except (PipelineError, PassError, CalibrationError) as err:
        _fail(str(err))
    if output is None:
        typer.echo(print_ir(graph))
    else:
        save_ir(graph, output)
        typer.echo(f"wrote {output} ({len(graph.nodes)} nodes)", err=True)


@app.command()
def report(path: Path = typer.Argument(..., help="Accuracy ledger written by `nimbus opt --ledger`.")):
    """Print an accuracy ledger: per pass, output drift, metric, size, sparsity and FLOPs; then
    the nodes each pass changed, worst first, and the layers kept in float."""
    from nimbus.passes.ledger import Ledger

    if not path.is_file():
        _fail(f"no such file: {path}")
    try:
        typer.echo(Ledger.load(path).table())
    except (ValueError, KeyError, TypeError) as err:
        _fail(f"{path} is not an accuracy ledger: {err}")


@app.command("compile")
def compile_model(
    spec: str = typer.Argument(..., help="Model factory FILE.py:FUNCTION, or an IR file (.nir)."),
    input_shape: List[str] = typer.Option([], "--input-shape", "-s",
                                          help="Shape of one input, e.g. 1,3,32,32 (repeat per input)."),
    input_dtype: List[str] = typer.Option([], "--input-dtype", help="dtype per input; default f32."),
    static_batch: bool = typer.Option(False, "--static-batch", help="Fix the batch size."),
    pipeline: Optional[str] = typer.Option(
        None, "--pipeline", "-p", help="Pass pipeline; default: fold and fuse, plus int8 "
                                       "quantization when --calibration is given."),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="Calibration data (.npz or .npy)."),
    target: str = typer.Option("cpu", "--target", help="cpu or cuda."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the artifact (.nimbus)."),
):
    """Compile a model into a .nimbus artifact and print a summary."""
    from nimbus.compiler.compile import compile as compile_graph
    from nimbus.compiler.lowering import PreflightError
    from nimbus.compiler.text import load_ir
    from nimbus.passes import PassError, PipelineError
    from nimbus.passes.calibration import CalibrationError

    if spec.endswith(".nir"):
        if not Path(spec).is_file():
            _fail(f"no such file: {spec}")
        graph = load_ir(Path(spec))
    else:
        if not input_shape:
            _fail("compiling a model factory needs --input-shape")
        graph = _import_graph(spec, input_shape, input_dtype, static_batch)
    try:
        compiled = compile_graph(graph, pipeline=pipeline, calibration=calibration, target=target)
    except (PipelineError, PassError, CalibrationError, PreflightError) as err:
        _fail(str(err))
    compiled.save(output)
    summary = compiled.summary()
    typer.echo(f"wrote {output}: {summary['artifact_bytes']} bytes, pipeline {summary['pipeline']}")
    typer.echo("ops: " + ", ".join(f"{op} x{count}" for op, count in summary["ops"].items()))
    typer.echo(f"batch 1: {summary['mflops_batch_1']} MFLOPs, activation memory "
               f"{summary['peak_activation_bytes_batch_1']} bytes "
               f"({summary['unshared_activation_bytes_batch_1']} without buffer reuse)")
    if target == "cpu":
        typer.echo(f"measured: {compiled.measure_latency():.3f} ms per batch-1 run on this machine "
                   "(median of 10)")
    if summary["torch_ops"]:
        typer.echo("run with torch (no Triton kernel): " + ", ".join(summary["torch_ops"]))
    for row in summary["int8_advice"]:
        verdict = "int8 expected faster" if row["int8_expected_faster"] else "; ".join(row["reasons"])
        kind = "int8" if row["int8"] else "float"
        typer.echo(f"  {row['layer']} ({row['op']}, {kind}): {verdict}")


@app.command()
def run(
    path: Path = typer.Argument(..., help="Artifact (.nimbus)."),
    inputs: List[str] = typer.Option(..., "--input", "-i",
                                     help="NAME=FILE.npy, or FILE.npy for a single-input model."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Write the outputs here (.npz); else print them."),
    profile: int = typer.Option(0, "--profile", min=0, metavar="RUNS",
                                help="Then time RUNS more runs: each plan step's median ms."),
):
    """Run an artifact on inputs from .npy files."""
    import numpy as np

    from nimbus.runtime.artifact import ArtifactError
    from nimbus.runtime.session import Session, SessionError

    try:
        session = Session(path)
    except ArtifactError as err:
        _fail(str(err))
    names = [spec.name for spec in session.inputs]
    feeds = {}
    for item in inputs:
        name, _, file = item.rpartition("=")
        if not name:
            if len(names) != 1:
                _fail(f"the model has inputs {names}: give NAME=FILE.npy")
            name = names[0]
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as err:
            _fail(f"cannot read {file}: {err}")
    try:
        results = session.run(feeds)
    except SessionError as err:
        _fail(str(err))
    if output is not None:
        np.savez(output, **results)
        typer.echo(f"wrote {output}")
    else:
        for name, array in results.items():
            typer.echo(f"{name}: {array.dtype}{list(array.shape)}\n{array}")
    if profile:
        _echo_profile(session.profile(feeds, repeats=profile), profile)


def _echo_profile(rows: list[dict], runs: int) -> None:
    """Session.profile's rows as a table: plan order, each step's share of the total."""
    total = sum(row["ms"] for row in rows)
    where = "the native plan" if rows and rows[0]["native"] else "the executor"
    typer.echo(f"profile: median of {runs} runs per step on {where}, {total:.3f} ms in all")
    typer.echo(f"{'step':>4}  {'op':<22}{'ms':>9}{'share':>8}  source")
    for index, row in enumerate(rows):
        share = row["ms"] / total if total > 0 else 0.0
        typer.echo(f"{index:>4}  {row['op']:<22}{row['ms']:>9.3f}{share:>8.1%}  {row['source']}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="Artifact (.nimbus).")):
    """Show an artifact's manifest, signature, weights and plan without running it."""
    from nimbus.runtime.artifact import ArtifactError, read_artifact

    try:
        artifact = read_artifact(path)
    except ArtifactError as err:
        _fail(str(err))
    manifest = artifact.manifest
    typer.echo(f"{path}: format {manifest['format_version']}, {manifest.get('producer', '')}, "
               f"target {manifest.get('target', '?')}")
    typer.echo(f"pipeline: {manifest.get('pipeline', '')}")
    for kind in ("inputs", "outputs"):
        for spec in manifest.get(kind, []):
            typer.echo(f"{kind[:-1]} {spec['name']}: {spec['dtype']}{spec['shape']}")
    stored = sum(r.nbytes for r in artifact.records.values())
    raw = sum(a.nbytes for a in artifact.tensors.values())
    typer.echo(f"weights: {len(artifact.tensors)} tensors, {raw} bytes ({stored} stored)")
    steps = (artifact.plan or {}).get("steps", [])
    ops: dict[str, int] = {}
    for step in steps:
        ops[step["op"]] = ops.get(step["op"], 0) + 1
    typer.echo(f"plan: {len(steps)} steps: " + ", ".join(f"{op} x{n}" for op, n in ops.items()))


@app.command()
def serve(
    # str, not Path: Path would fold the '//' of 's3://bucket/key'.
    models: List[str] = typer.Argument(None, help="Artifacts (.nimbus), folders of them or storage "
                                       "URIs (s3://, gs://, az://, https://...#sha256=HEX); "
                                       "default: $AIP_STORAGE_URI, $NIMBUS_MODEL_DIR, "
                                       "$SM_MODEL_DIR, $AZUREML_MODEL_DIR, /mnt/models or "
                                       "/opt/ml/model. Each is named by its file stem."),
    name: Optional[str] = typer.Option(None, "--name", help="Serve a single model under this name."),
    host: Optional[str] = typer.Option(None, "--host", help="Default 0.0.0.0 in a cloud container "
                                       "(SageMaker, Vertex AI environment), else 127.0.0.1."),
    port: Optional[int] = typer.Option(None, "--port", help="Default AIP_HTTP_PORT, "
                                       "SAGEMAKER_BIND_TO_PORT or 8080."),
    max_body_bytes: int = typer.Option(6 << 20, "--max-body-bytes", help="Larger bodies get 413."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests queued or running per model "
                                  "before 503."),
    workers: int = typer.Option(2, "--workers", help="Threads running each model."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds per request before 504."),
    target: str = typer.Option("cpu", "--target", envvar="NIMBUS_TARGET",
                               help="cpu, or cuda (the GPU backend; needs the cuda extra and "
                               "torch)."),
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", help="A run longer than this makes its model not ready "
        "(default: twice --timeout)."),
    graceful_timeout: float = typer.Option(20.0, "--graceful-timeout",
                                           help="Seconds to drain in-flight requests on SIGTERM."),
    log_level: str = typer.Option("info", "--log-level"),
    max_batch_size: List[str] = typer.Option(
        [], "--max-batch-size", help="Dynamic batching: rows per run, N for every model or NAME=N "
        "(repeatable); default 1 = off."),
    max_batch_delay_ms: List[str] = typer.Option(
        [], "--max-batch-delay-ms", help="Longest wait for a batch to fill, MS or NAME=MS "
        "(repeatable); default 2."),
    model_repository: Optional[str] = typer.Option(
        None, "--model-repository", help="Serve ROOT/name/version/model.nimbus (several versions "
        "per model); a folder or a storage URI."),
    management_token: Optional[str] = typer.Option(
        None, "--management-token", envvar="NIMBUS_MANAGEMENT_TOKEN",
        help="Turn the management API (load/unload/default) on behind this bearer token; off "
        "without it."),
    api_token: Optional[str] = typer.Option(
        None, "--api-token", envvar="NIMBUS_API_TOKEN",
        help="Bearer token required on inference and model metadata routes."),
    azure_liveness_route: Optional[str] = typer.Option(
        None, "--azure-liveness-route", help="Azure ML deployment's liveness route."),
    azure_readiness_route: Optional[str] = typer.Option(
        None, "--azure-readiness-route", help="Azure ML deployment's readiness route."),
    azure_scoring_route: Optional[str] = typer.Option(
        None, "--azure-scoring-route", help="Azure ML deployment's scoring route."),
    tls_certfile: Optional[str] = typer.Option(
        None, "--tls-certfile", help="Serve https with this certificate (PEM); needs --tls-keyfile."),
    tls_keyfile: Optional[str] = typer.Option(None, "--tls-keyfile",
                                              help="The certificate's private key (PEM)."),
    tls_ca_certs: Optional[str] = typer.Option(
        None, "--tls-ca-certs", help="Require client certificates signed by these CAs (PEM)."),
):
    """Serve artifacts over HTTP: KServe v2, SageMaker, Vertex AI, Azure ML routes and /metrics."""
    from nimbus.runtime.server.main import serve as run_server

    try:
        run_server(models or [], name=name, host=host, port=port, max_body_bytes=max_body_bytes,
                   max_queue=max_queue, workers=workers, timeout_s=timeout,
                   graceful_timeout_s=graceful_timeout, log_level=log_level,
                   max_batch_size=max_batch_size, max_batch_delay_ms=max_batch_delay_ms,
                   model_repository=model_repository, management_token=management_token,
                   api_token=api_token, azure_routes=(azure_liveness_route, azure_readiness_route,
                                                      azure_scoring_route),
                   tls_certfile=tls_certfile, tls_keyfile=tls_keyfile, tls_ca_certs=tls_ca_certs,
                   stall_timeout_s=stall_timeout, target=target)
    except (ValueError, ImportError) as err:  # ImportError: --target cuda without torch
        _fail(str(err))


@app.command()
def deploy(
    artifact: Path = typer.Argument(..., help="Artifact (.nimbus) to upload."),
    destination: str = typer.Argument(..., help="s3://bucket/key, gs://... or az://...; a prefix "
                                      "ending in '/' keeps the file's name. For a model "
                                      "repository give the key .../NAME/VERSION/model.nimbus."),
):
    """Check that an artifact loads, then upload it with its sha256; prints the object's URI."""
    from nimbus.runtime.session import Session
    from nimbus.runtime.storage import upload

    if not artifact.is_file():
        _fail(f"no such file: {artifact}")
    try:
        Session(artifact)  # reads and verifies all of it: checksums, format version, plan
        typer.echo(upload(artifact, destination))
    except ValueError as err:
        _fail(str(err))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
