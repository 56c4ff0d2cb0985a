"""The artifact container: exact round trip, memory-mapped read-only tensors, and a typed error
for every malformed, corrupted, hostile or newer-version file (fuzzed with hypothesis)."""

from __future__ import annotations

import json
import pickle
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimbus.runtime.artifact import (ALIGNMENT, DTYPES, FORMAT_VERSION, MAGIC, PREAMBLE,
                                     ArtifactError, read_artifact, write_artifact)

MANIFEST = {"producer": "nimbus test", "inputs": [{"name": "x", "dtype": "f32", "shape": ["N", 3]}]}
PLAN = {"steps": [{"kernel": "relu", "inputs": [0], "outputs": [1]}]}


def sample_tensors():
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8),
            "conv.bias": rng.integers(-1000, 1000, size=4).astype(np.int32),
            "scale": np.float32(0.5).reshape(()), "table": rng.standard_normal((5, 7)).astype(np.float32),
            "mask": np.array([True, False, True]), "empty": np.zeros((0, 3), np.float16)}


def sample_bytes() -> bytes:
    return write_artifact(MANIFEST, PLAN, sample_tensors(), {"ir": b"graph @g() {}"},
                          {"conv.weight": {"scale": [0.1, 0.2, 0.3, 0.4], "axis": 0}})


def test_round_trip_from_bytes_and_from_a_memory_mapped_file(tmp_path):
    data = sample_bytes()
    path = tmp_path / "model.nimbus"
    path.write_bytes(data)
    for source in (data, path):
        artifact = read_artifact(source)
        assert artifact.manifest == dict(MANIFEST, format_version=FORMAT_VERSION)
        assert artifact.plan == PLAN and artifact.sections == {"ir": b"graph @g() {}"}
        for name, expected in sample_tensors().items():
            actual = artifact.tensors[name]
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
            assert np.array_equal(actual, expected), name
            assert not actual.flags.writeable
        assert artifact.records["conv.weight"].meta["axis"] == 0
    assert all(r.offset % ALIGNMENT == 0 for r in read_artifact(data).records.values())


def rebuilt(header: dict, data: bytes, *, version: int = FORMAT_VERSION) -> bytes:
    """``data`` with its header replaced (the data section stays where it was)."""
    _, _, _, length = PREAMBLE.unpack_from(data, 0)
    body = json.dumps(header, separators=(",", ":")).encode()
    start = -(-(PREAMBLE.size + length) // ALIGNMENT) * ALIGNMENT
    assert PREAMBLE.size + len(body) <= start, "the new header must fit the old space"
    padding = b" " * (start - PREAMBLE.size - len(body))
    return PREAMBLE.pack(MAGIC, version, 0, len(body) + len(padding)) + body + padding + data[start:]


def header_of(data: bytes) -> dict:
    _, _, _, length = PREAMBLE.unpack_from(data, 0)
    return json.loads(data[PREAMBLE.size:PREAMBLE.size + length])


def mutate(edit) -> bytes:
    data = sample_bytes()
    header = header_of(data)
    edit(header)
    return rebuilt(header, data)


def tensor(header, name):
    return next(t for t in header["tensors"] if t["name"] == name)


def with_header(body: bytes) -> bytes:
    return PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body


HOSTILE = {
    "empty": (b"", "too short"),
    "truncated preamble": (b"NIMBUS", "too short"),
    "wrong magic": (b"PK\x03\x04" + b"\x00" * 60, "wrong magic"),
    "pickle payload": (pickle.dumps({"payload": list(range(50))}), "wrong magic"),
    "huge header length": (PREAMBLE.pack(MAGIC, 1, 0, 1 << 60) + b"{}", "header length"),
    "not json": (with_header(b"{nope"), "not valid JSON"),
    "not utf-8": (with_header(b"\xff\xfe"), "not valid UTF-8"),
    "deep json": (with_header(b"[" * 100 + b"]" * 100), "nests deeper"),
    "duplicate keys": (with_header(b'{"a": 1, "a": 2}'), "repeats the key"),
    "nan in header": (with_header(b'{"a": NaN}'), "non-standard number"),
    "header not an object": (with_header(b"[1, 2]"), "must be a JSON object"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_files_get_a_typed_error(name):
    data, message = HOSTILE[name]
    with pytest.raises(ArtifactError, match=message):
        read_artifact(data)


EDITS = {
    "out of range": (lambda h: tensor(h, "table").update(offset=1 << 40), "outside the data"),
    "misaligned": (lambda h: tensor(h, "table").update(offset=tensor(h, "table")["offset"] + 4),
                   "misaligned"),
    "negative offset": (lambda h: tensor(h, "table").update(offset=-64), "non-negative"),
    "unknown dtype": (lambda h: tensor(h, "table").update(dtype="object"), "unknown dtype"),
    "negative dim": (lambda h: tensor(h, "table").update(shape=[-5, -7]), "invalid shape"),
    "huge dims": (lambda h: tensor(h, "table").update(shape=[1 << 30, 1 << 30, 1 << 30]),
                  "too many elements"),
    "size mismatch": (lambda h: tensor(h, "table").update(shape=[5, 8]), "needs 160"),
    "overlap": (lambda h: tensor(h, "conv.bias").update(offset=tensor(h, "conv.weight")["offset"],
                                                         nbytes=16, shape=[4]),
                "overlap"),
    "duplicate tensor": (lambda h: tensor(h, "mask").update(name="table"), "appears twice"),
    "bad name": (lambda h: tensor(h, "table").update(name=""), "invalid name"),
    "missing manifest": (lambda h: h.pop("manifest"), "lacks 'manifest'"),
    "version mismatch": (lambda h: h["manifest"].update(format_version=7), "does not match"),
    "bad section": (lambda h: h["sections"]["ir"].update(nbytes=1 << 50), "outside the data"),
}


@pytest.mark.parametrize("name", EDITS)
def test_every_record_is_validated(name):
    edit, message = EDITS[name]
    with pytest.raises(ArtifactError, match=message):
        read_artifact(mutate(edit))


def test_newer_version_names_both_versions():
    data = sample_bytes()
    newer = rebuilt(dict(header_of(data), manifest=dict(header_of(data)["manifest"],
                                                        format_version=FORMAT_VERSION + 1)),
                    data, version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match=f"version {FORMAT_VERSION + 1} is newer .* "
                                            f"supports \\(version {FORMAT_VERSION}\\)"):
        read_artifact(newer)


def test_flipped_data_byte_fails_the_checksum():
    data = bytearray(sample_bytes())
    record = tensor(header_of(bytes(data)), "table")
    data[record["offset"] + 3] ^= 0x40
    with pytest.raises(ArtifactError, match="tensor 'table' is corrupted"):
        read_artifact(bytes(data))
    assert zlib.crc32(b"") == 0  # an empty tensor's checksum is trivially valid


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ArtifactError, match="cannot open artifact"):
        read_artifact(tmp_path / "absent.nimbus")
    (tmp_path / "empty.nimbus").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is empty"):
        read_artifact(tmp_path / "empty.nimbus")


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.none() | st.integers(0, 10_000))
def test_mutated_artifacts_load_or_fail_cleanly(edits, cut):
    """Random byte flips and truncations: a valid artifact or an ArtifactError, nothing else."""
    data = bytearray(sample_bytes())
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    try:
        artifact = read_artifact(bytes(data))
    except ArtifactError:
        return
    assert set(artifact.tensors) <= set(sample_tensors()) | {t["name"] for t in
                                                              header_of(bytes(data))["tensors"]}


def test_writer_refuses_unsupported_dtypes():
    with pytest.raises(ArtifactError, match="cannot hold"):
        write_artifact({}, None, {"x": np.zeros(2, np.complex64)})
    assert struct.calcsize("<8sIIQ") == PREAMBLE.size == 24


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 1025])
def test_writer_refuses_names_the_reader_would(name):
    """What the writer lets through, the reader takes: names are checked by the same rule."""
    with pytest.raises(ArtifactError, match="invalid name"):
        write_artifact({}, None, {name: np.zeros(2, np.float32)})
    with pytest.raises(ArtifactError, match="invalid name"):
        write_artifact({}, None, {}, {name: b""})


def test_constants_with_names_an_artifact_cannot_hold_are_renamed():
    """The IR takes any constant name (an empty one, NUL); lowering gives those tensors names
    the artifact takes, unlike any other constant's, and the model runs (a random graph
    compiled into an unreadable file before)."""
    import nimbus
    from nimbus.compiler.ir import Graph, TensorType
    from nimbus.compiler.dtypes import DType

    graph = Graph("g")
    x = graph.add_input("x", TensorType(DType.f32, (2, 3)))
    total = x
    for name, value in (("", 1.0), ("a\x00b", 2.0), ("constant.0", 4.0), ("constant.1", 8.0)):
        weight = graph.add_constant(name, np.full(3, value, np.float32))
        total = graph.add_node("add", [total, weight]).result
    graph.set_outputs([total], ["y"])
    session = nimbus.load(nimbus.compile(graph).data)
    names = set(read_artifact(nimbus.compile(graph).data).tensors)
    assert len(names) == 4 and {"constant.0", "constant.1"} <= names
    out = session.run({"x": np.zeros((2, 3), np.float32)})["y"]
    np.testing.assert_array_equal(out, np.full((2, 3), 15.0, np.float32))


def sparse_weights() -> np.ndarray:
    """Pruned, shared int8 weights: mostly zeros and a handful of values, as compression leaves."""
    rng = np.random.default_rng(1)
    values = rng.choice(np.array([-90, -31, 0, 0, 0, 0, 17, 64], np.int8), size=(64, 32, 3, 3))
    return values.astype(np.int8)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_compressed_tensors_round_trip_and_incompressible_ones_stay_raw(compression):
    tensors = dict(sample_tensors(), weights=sparse_weights())
    data = write_artifact(MANIFEST, PLAN, tensors, compression=compression)
    artifact = read_artifact(data)
    assert artifact.records["weights"].encoding == compression
    assert artifact.records["weights"].nbytes < sparse_weights().nbytes / 3
    assert artifact.records["table"].encoding == "raw"  # random floats do not shrink enough
    for name, expected in tensors.items():
        assert np.array_equal(artifact.tensors[name], expected) and artifact.tensors[name].dtype == expected.dtype
        assert not artifact.tensors[name].flags.writeable
    assert len(data) < len(write_artifact(MANIFEST, PLAN, tensors)) / 2


def compressed_with(stream: bytes, shape: list[int], encoding: str = "zlib") -> bytes:
    """An artifact whose one u8 tensor is `stream`, declared as `shape` with `encoding`."""
    data = write_artifact(MANIFEST, PLAN, {"w": np.zeros(4096, np.uint8)}, compression="zlib")
    header = header_of(data)
    record = tensor(header, "w")
    start = record["offset"]
    record.update(shape=shape, nbytes=len(stream), crc32=zlib.crc32(stream), encoding=encoding)
    body = bytearray(rebuilt(header, data))
    body[start:start + len(stream)] = stream
    return bytes(body[:start + len(stream)])


@pytest.mark.parametrize("stream, shape, encoding, message", [
    (zlib.compress(bytes(1 << 20)), [4096], "zlib", "decompresses to a size other than"),  # a bomb
    (zlib.compress(bytes(100)), [4096], "zlib", "decompresses to a size other than"),
    (b"\x78\x9c not zlib at all", [4096], "zlib", "corrupt zlib stream"),
    (zlib.compress(bytes(4096)), [4096], "brotli", "unknown encoding"),
])
def test_hostile_compressed_tensors_get_a_typed_error(stream, shape, encoding, message):
    with pytest.raises(ArtifactError, match=message):
        read_artifact(compressed_with(stream, shape, encoding))


def test_writer_refuses_an_unknown_compression():
    with pytest.raises(ArtifactError, match="unknown compression 'gzip'"):
        write_artifact(MANIFEST, PLAN, {}, compression="gzip")


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_compressed_artifacts_load_or_fail_cleanly(edits):
    data = bytearray(write_artifact(MANIFEST, PLAN, {"weights": sparse_weights()}, compression="zlib"))
    for position, value in edits:
        data[position % len(data)] = value
    try:
        artifact = read_artifact(bytes(data))
    except ArtifactError:
        return
    # A flipped byte may rename the tensor and still load; whatever loads is what it declares.
    for name, array in artifact.tensors.items():
        record = artifact.records[name]
        assert array.shape == record.shape and array.dtype == DTYPES[record.dtype]
