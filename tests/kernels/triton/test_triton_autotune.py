"""The tuning cache: configs round-trip through disk and artifact data, and untrusted data that is
not one of a kernel's own configs is refused."""

import json
import os
import subprocess
import sys

import pytest
from nimbus.kernels.triton import autotune, gemm, softmax  # noqa: F401 (registers its spaces)
from nimbus.kernels.triton.autotune import TuningCache, config, config_from_json, shape_key


def test_configs_round_trip_through_a_file(tmp_path):
    path = tmp_path / "cache" / "tuning.json"
    cache = TuningCache(path)
    best = gemm.QGEMM_SPACE[2]
    cache.put("NVIDIA H100", "qgemm", shape_key(256, 4096, 4096), best)
    assert json.loads(path.read_text())["devices"]["NVIDIA H100"]["qgemm"]["256x4096x4096"] == best.to_json()
    reread = TuningCache(path)
    assert reread.get("NVIDIA H100", "qgemm", "256x4096x4096") == best
    assert reread.get("NVIDIA H200", "qgemm", "256x4096x4096") is None


def test_exported_data_merges_into_another_cache():
    source = TuningCache()
    source.put("gpu", "gemm", "1x2x3xfloat16", gemm.GEMM_SPACE[1])
    target = TuningCache()
    target.merge(json.loads(json.dumps(source.export())))
    assert target.get("gpu", "gemm", "1x2x3xfloat16") == gemm.GEMM_SPACE[1]


@pytest.mark.parametrize("data, message", [
    ({"format": 2, "devices": {}}, "format 1"),
    ({"format": 1}, "'devices'"),
    ({"format": 1, "devices": {"gpu": {"no_such_kernel": {}}}}, "unknown kernel"),
    ({"format": 1, "devices": {"gpu": {"qgemm": {"k": {"BLOCK_M": "import os"}}}}}, "positive integers"),
    ({"format": 1, "devices": {"gpu": {"qgemm": {"k": {"BLOCK_M": 16, "num_stages": 2}}}}}, "lacks"),
    ({"format": 1, "devices": {"gpu": {"qgemm": {"k": {
        "BLOCK_M": 4096, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 8, "num_warps": 4, "num_stages": 2}}}}},
     "not in the kernel's config space"),
])
def test_untrusted_tuning_data_is_validated(data, message):
    with pytest.raises(ValueError, match=message):
        TuningCache().merge(data)


def test_an_unreadable_cache_file_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable tuning cache"):
        cache = TuningCache(path)
    assert cache.export() == {"format": 1, "devices": {}}


def test_the_interpreter_uses_each_kernels_first_config_without_measuring():
    assert autotune.interpreting()
    ran = []
    chosen = autotune.tuned("qgemm", "1x1x1", None, ran.append)
    assert chosen == gemm.QGEMM_SPACE[0] and ran == []


def test_config_from_json_accepts_exactly_the_space():
    for candidate in gemm.QGEMM_SPACE:
        assert config_from_json(candidate.to_json(), gemm.QGEMM_SPACE) == candidate
    assert str(config(num_warps=8, num_stages=3, BLOCK_M=64)) == "BLOCK_M=64 warps=8 stages=3"


def test_a_cache_naming_kernels_of_modules_not_yet_imported_loads(tmp_path):
    """Validation imports every kernel module, so a fresh process reads a full cache file."""
    path = tmp_path / "tuning.json"
    cache = TuningCache(path)
    cache.put("gpu", "softmax_rows", "7", autotune.SPACES["softmax_rows"][0])
    script = ("import warnings, pathlib; warnings.simplefilter('error');"
              "from nimbus.kernels.triton.autotune import TuningCache;"
              f"print(TuningCache(pathlib.Path({str(path)!r})).get('gpu', 'softmax_rows', '7'))")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "warps=" in result.stdout
