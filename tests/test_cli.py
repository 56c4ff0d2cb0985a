"""The command line as a user runs it: import the example model, show it, optimize it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from nimbus.cli import app

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cnn.py"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_import_show_and_opt(tmp_path):
    model = tmp_path / "cnn.nir"
    result = invoke("import", f"{EXAMPLE}:build", "--input-shape", "1,3,32,32", "-o", model)
    assert result.exit_code == 0, result.output
    assert model.exists() and Path(f"{model}.safetensors").exists()

    shown = invoke("show", model, "--batch", "4")
    assert shown.exit_code == 0, shown.output
    assert "graph @" in shown.output and "conv2d(%x" in shown.output
    assert "N=4" in shown.output and "total" in shown.output
    assert "62,006" in shown.output  # the CNN's parameter count

    optimized = tmp_path / "cnn.opt.nir"
    opt = invoke("opt", model, "-p", "canonicalize,fuse", "--print-ir-after", "fuse", "-o", optimized)
    assert opt.exit_code == 0, opt.output
    assert "IR after fuse" in opt.output and "fused_conv2d" in opt.output
    assert "canonicalize" in opt.output  # the statistics table
    default = invoke("opt", model)
    assert default.exit_code == 0 and "fused_linear" in default.output


def test_passes_lists_every_pass_with_options():
    result = invoke("passes")
    assert result.exit_code == 0
    for name in ("canonicalize", "fold-batchnorm", "fold-constants", "fuse",
                 "eliminate-dead-code", "eliminate-common-subexpressions"):
        assert name in result.output
    assert "max-elements: int = 16" in result.output


def test_errors_are_one_clear_line(tmp_path):
    missing = invoke("show", tmp_path / "nope.nir")
    assert missing.exit_code == 1 and "no such file" in missing.output
    bad_spec = invoke("import", "nofactory", "--input-shape", "1,3", "-o", tmp_path / "x.nir")
    assert bad_spec.exit_code == 1 and "expected FILE.py:FACTORY" in bad_spec.output
    model = tmp_path / "m.nir"
    invoke("import", f"{EXAMPLE}:build", "--input-shape", "2,3,32,32", "-o", model)
    bad_pipeline = invoke("opt", model, "-p", "fuse,qantize")
    assert bad_pipeline.exit_code == 1 and "unknown pass 'qantize'" in bad_pipeline.output


def test_compile_inspect_and_run(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    artifact = tmp_path / "cnn.nimbus"
    compiled = invoke("compile", f"{EXAMPLE}:build", "--input-shape", "1,3,32,32",
                      "--calibration", calibration, "-o", artifact)
    assert compiled.exit_code == 0, compiled.output
    assert "quantize" in compiled.output and "qconv2d x2" in compiled.output
    assert "activation memory" in compiled.output and "ms per batch-1 run" in compiled.output

    inspected = invoke("inspect", artifact)
    assert inspected.exit_code == 0, inspected.output
    assert "input x: f32['N', 3, 32, 32]" in inspected.output and "plan:" in inspected.output

    batch = tmp_path / "x.npy"
    np.save(batch, rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    outputs = tmp_path / "out.npz"
    ran = invoke("run", artifact, "--input", batch, "-o", outputs)
    assert ran.exit_code == 0, ran.output
    assert np.load(outputs)["output"].shape == (2, 10)
    profiled = invoke("run", artifact, "--input", batch, "--profile", 3)
    assert profiled.exit_code == 0, profiled.output
    assert "output: float32[2, 10]" in profiled.output
    assert "profile: median of 3 runs per step on the native plan" in profiled.output
    assert "qconv2d" in profiled.output and "cnn.py" in profiled.output

    np.save(batch, np.zeros((2, 3, 30, 32), np.float32))
    wrong = invoke("run", artifact, "--input", f"x={batch}")
    assert wrong.exit_code != 0 and "input 'x' axis 2" in wrong.output
    broken = tmp_path / "broken.nimbus"
    broken.write_bytes(artifact.read_bytes()[:100])
    assert "header length" in invoke("inspect", broken).output
