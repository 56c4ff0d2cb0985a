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
