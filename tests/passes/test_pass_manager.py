"""Pipeline text, the pass registry and the manager: errors with carets and suggestions,
verification after every pass, IR printing, statistics and plugin passes from entry points."""

from __future__ import annotations

import io
import sys
import textwrap

import pytest

from nimbus.compiler.dtypes import DType
from nimbus.compiler.ir import Builder, Graph, Location, TensorType
from nimbus.passes import (PassError, PassFailure, PassManager, PassRegistryError, PipelineError,
                           get_pass, parse_pipeline, register_pass, run_passes)
from nimbus.passes import registry


def test_pipeline_round_trips_to_canonical_text():
    pipeline = parse_pipeline(' fold-constants{max-elements=8}, fuse{activations=false, '
                              'elementwise=true} ,canonicalize')
    assert str(pipeline) == ("fold-constants{max-elements=8},"
                             "fuse{activations=false elementwise=true},canonicalize")
    assert str(parse_pipeline(str(pipeline))) == str(pipeline)
    assert pipeline.names() == ["fold-constants", "fuse", "canonicalize"]
    assert str(parse_pipeline("")) == ""


@pytest.mark.parametrize("text, message, column", [
    ("fold-batchnrm", "unknown pass 'fold-batchnrm'; did you mean 'fold-batchnorm'?", 0),
    ("fuse,qantize", "unknown pass 'qantize'", 5),
    ("fuse{activaions=true}", "pass 'fuse' has no option 'activaions'; did you mean 'activations'?", 5),
    ("fuse{activations=yes}", "option 'activations' of pass 'fuse' takes bool, got 'yes'", 17),
    ("fold-constants{max-elements=1.5}", "takes int, got '1.5'", 28),
    ("fuse{activations=true", "missing '}' after the options of 'fuse'", 21),
    ("fuse{activations}", "expected '=' after option 'activations'", 16),
    ("fuse,", "expected a pass name", 5),
    ("fuse fuse", "expected ',' between passes", 5),
    ("fuse{activations=true activations=false}", "option 'activations' is given twice", 22),
])
def test_pipeline_errors_point_at_the_spot(text, message, column):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert message in str(info.value)
    assert info.value.column == column
    assert str(info.value).splitlines()[-1] == "  " + " " * column + "^"


def relu_graph():
    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.f32, (2, 3)))
    b = Builder(graph, Location("m.py", 1))
    graph.set_outputs([b.relu(b.neg(x))])
    return graph


@pytest.fixture
def scratch_passes():
    """Register throwaway passes for one test and remove them afterwards."""
    before = dict(registry.PASSES)
    yield
    registry.PASSES.clear()
    registry.PASSES.update(before)


def test_manager_verifies_after_each_pass_and_names_the_pipeline(scratch_passes):
    @register_pass("break-types")
    def break_types(graph, ctx) -> bool:
        """Corrupt a result type."""
        graph.nodes[-1].results[0].type = TensorType(DType.f32, (9,))
        return True

    with pytest.raises(PassError) as info:
        run_passes(relu_graph(), "canonicalize,break-types")
    message = str(info.value)
    assert message.startswith("pass 'break-types' failed on relu (m.py:1) after [canonicalize]")
    assert "left an invalid graph" in message


def test_pass_failures_carry_the_node(scratch_passes):
    @register_pass("refuse")
    def refuse(graph, ctx) -> bool:
        """Refuse the first node."""
        raise PassFailure("cannot handle this", graph.nodes[0])

    with pytest.raises(PassError, match=r"pass 'refuse' failed on neg \(m.py:1\): cannot handle"):
        run_passes(relu_graph(), "refuse")


def test_run_passes_leaves_the_input_graph_alone():
    graph = relu_graph()
    run_passes(graph, "fuse")
    assert [n.op for n in graph.nodes] == ["neg", "relu"]


def test_report_and_print_ir_after(scratch_passes):
    stream = io.StringIO()
    manager = PassManager("eliminate-dead-code,fuse", print_ir_after=["fuse"], stream=stream)
    graph = manager.run(relu_graph())
    assert [n.op for n in graph.nodes] == ["fused_elementwise"]
    assert "IR after fuse" in stream.getvalue() and "fused_elementwise" in stream.getvalue()
    fuse_record = manager.report.records[1]
    assert fuse_record.changed and (fuse_record.nodes_before, fuse_record.nodes_after) == (2, 1)
    assert fuse_record.stats["elementwise-ops-fused"] == 2
    table = manager.report.table()
    assert "fuse" in table and "2 -> 1" in table


def test_options_come_from_typed_keyword_parameters(scratch_passes):
    @register_pass("scale-everything")
    def scale_everything(graph, ctx, *, factor: float = 2.0, times: int = 1, name: str = "x",
                         enabled: bool = True) -> bool:
        """Pretend to scale.

        Options:
        factor: the factor
        """
        ctx.count("calls", times)
        return False

    info = get_pass("scale-everything")
    assert [(o.name, o.type, o.default) for o in info.options.values()] == [
        ("factor", float, 2.0), ("times", int, 1), ("name", str, "x"), ("enabled", bool, True)]
    assert info.options["factor"].doc == "the factor"
    assert info.summary == "Pretend to scale."
    manager = PassManager('scale-everything{times=3 name="a b"}')
    manager.run(relu_graph())
    assert manager.report.records[0].stats == {"calls": 3}


def test_bad_registrations_are_refused(scratch_passes):
    with pytest.raises(PassRegistryError, match="kebab-case"):
        register_pass("Bad_Name")(lambda graph, ctx: False)

    def untyped(graph, ctx, *, level=1):
        """No annotation."""

    with pytest.raises(PassRegistryError, match="needs a bool, int, float or str annotation"):
        register_pass("untyped")(untyped)


def test_plugin_pass_found_through_entry_point(tmp_path, monkeypatch, scratch_passes):
    """A package that declares a `nimbus.passes` entry point is found by name."""
    package = tmp_path / "nimbus_plugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        from nimbus.passes import register_pass

        @register_pass("demo-count-nodes")
        def count_nodes(graph, ctx) -> bool:
            """Count the nodes."""
            ctx.count("nodes", len(graph.nodes))
            return False
    '''))
    dist_info = tmp_path / "nimbus_plugin_demo-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nimbus-plugin-demo\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[nimbus.passes]\ndemo = nimbus_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    manager = PassManager("demo-count-nodes")
    manager.run(relu_graph())
    assert manager.report.records[0].stats == {"nodes": 2}
    sys.modules.pop("nimbus_plugin_demo", None)
