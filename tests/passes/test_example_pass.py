"""The pass from docs/writing-a-pass.md, installed as its own package, runs by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from checks import assert_matches
from nimbus.compiler.dims import symbol
from nimbus.compiler.dtypes import DType
from nimbus.compiler.interpreter import interpret
from nimbus.compiler.ir import Builder, Graph, Location, TensorType
from nimbus.passes import PassManager, get_pass, registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "example_pass"


def test_example_pass_installs_and_runs_through_its_entry_point(tmp_path, monkeypatch):
    source, site = tmp_path / "source", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)  # the build writes beside its sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "PASSES", dict(registry.PASSES))
    monkeypatch.delitem(sys.modules, "nimbus_example_pass", raising=False)

    info = get_pass("gelu-tanh")
    assert info.options["scope"].doc.startswith("only rewrite GELUs")

    graph = Graph("ffn")
    x = graph.add_input("x", TensorType(DType.f32, (symbol("N"), 8)))
    encoder = Builder(graph, Location("model.py", 3, "encoder.ffn"))
    decoder = Builder(graph, Location("model.py", 9, "decoder.ffn"))
    graph.set_outputs([encoder.gelu(x), decoder.gelu(x)], ["enc", "dec"])
    manager = PassManager("gelu-tanh{scope=encoder}")
    rewritten = manager.run(graph.copy())
    assert [n.attrs["approximate"] for n in rewritten.nodes] == ["tanh", "none"]
    assert rewritten.nodes[0].loc.passes == ("gelu-tanh",)
    assert manager.report.records[0].stats == {"gelu(x) -> gelu(x){tanh}": 1}
    inputs = {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)}
    before, after = interpret(graph, inputs), interpret(rewritten, inputs)
    assert_matches(after["enc"], before["enc"], "tanh gelu", rtol=1e-3)
