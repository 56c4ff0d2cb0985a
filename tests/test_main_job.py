"""The README's main job runs end to end: every runtime answers and is accurate on digits."""

from main_job import main


def test_main_job_compares_nimbus_with_onnx_runtime(tmp_path, capsys):
    rows = main(["--epochs", "3", "--repeats", "2", "--threads", "1", "--out", str(tmp_path)])
    assert set(rows) == {"nimbus float", "nimbus int8", "onnxruntime float", "onnxruntime int8",
                         "pytorch eager float"}
    assert all(row["top1"] > 90.0 and row["batch 1"] > 0 for row in rows.values())
    assert abs(rows["nimbus int8"]["top1"] - rows["nimbus float"]["top1"]) <= 1.0
    assert (tmp_path / "cnn.int8.nimbus").exists()
    assert "onnxruntime / nimbus latency" in capsys.readouterr().out
