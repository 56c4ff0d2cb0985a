"""The .nimbus artifact format, defined once: the compiler writes it with ``write_artifact`` and
the runtime reads it with ``read_artifact``.

Layout (little endian)::

    0   8 bytes   magic b"NIMBUS\\x00\\x1a"
    8   u32       format version
    12  u32       reserved (0)
    16  u64       header length H
    24  H bytes   header: UTF-8 JSON {"manifest", "tensors", "sections", "plan"}
        ...       zero padding to a 64-byte boundary, then the data: every tensor and section
                  (such as the IR text) as raw bytes at a 64-byte-aligned absolute offset.

Reading never executes or unpickles anything from the file. Every size, offset, dtype, shape
and name is checked before use, and every tensor's CRC-32; a bad file raises ArtifactError
naming what is wrong. Tensors are read-only numpy views of the (memory-mapped) file.

A tensor may be stored compressed (its record's "encoding" is "zlib" or "lzma", from Python's
standard library, so the runtime needs nothing more): pruned, shared and int8 weights hold few
distinct values and compress several times. Its CRC covers the stored bytes; decoding stops at
the size its dtype and shape declare, so a hostile stream cannot inflate past it.
"""

from __future__ import annotations

import json
import lzma
import mmap
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

MAGIC = b"NIMBUS\x00\x1a"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sIIQ")
ALIGNMENT = 64
MAX_HEADER_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
MAX_NAME_LENGTH = 1024
MAX_RANK = 16
MAX_ELEMENTS = 1 << 40

DTYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "u8": np.uint8,
          "i32": np.int32, "i64": np.int64, "bool": np.bool_}
ENCODINGS = ("raw", "zlib", "lzma")
# A compressed tensor is kept only if it saves at least this share of its raw bytes; otherwise it
# stays raw, memory-mapped without a copy. Dense int8 weights save about 10%, not worth
# decompressing at every load; pruned or shared ones shrink 3x and more.
MIN_SAVING = 0.25


class ArtifactError(ValueError):
    """The artifact is malformed, corrupted, or from a newer format; says what is wrong."""


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int
    meta: dict = field(default_factory=dict)  # e.g. quantization parameters
    encoding: str = "raw"  # how the stored bytes encode the tensor (ENCODINGS)


@dataclass
class Artifact:
    """A validated artifact: manifest, plan, tensors (read-only views) and sections."""

    manifest: dict
    plan: Any
    tensors: dict[str, np.ndarray]
    records: dict[str, TensorRecord]
    sections: dict[str, bytes]


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def write_artifact(manifest: Mapping, plan: Any, tensors: Mapping[str, np.ndarray],
                   sections: Mapping[str, bytes] | None = None,
                   tensor_meta: Mapping[str, dict] | None = None,
                   compression: str = "raw") -> bytes:
    """The artifact's bytes. ``manifest`` and ``plan`` must be JSON data. With ``compression``
    "zlib" or "lzma", each tensor that shrinks by at least MIN_SAVING is stored compressed."""
    if compression not in ENCODINGS:
        raise ArtifactError(f"unknown compression '{compression}'; expected one of {', '.join(ENCODINGS)}")
    sections = dict(sections or {})
    tensor_meta = dict(tensor_meta or {})
    dtype_names = {np.dtype(v): k for k, v in DTYPES.items()}
    blobs: list[tuple[str, str, bytes]] = []  # (kind, name, bytes)
    encodings: dict[str, str] = {}
    for name in [*tensors, *sections]:
        _check_name(name, "write_artifact")  # what the reader would refuse is never written
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in dtype_names:
            raise ArtifactError(f"tensor '{name}' has dtype {array.dtype}, which artifacts cannot hold")
        data = array.tobytes()
        encodings[name], data = _encoded(data, compression)
        blobs.append(("tensor", name, data))
    blobs.extend(("section", name, bytes(data)) for name, data in sections.items())

    def header_for(offsets: list[int]) -> bytes:
        records, section_records = [], {}
        for (kind, name, data), offset in zip(blobs, offsets):
            crc = zlib.crc32(data)
            if kind == "tensor":
                array = np.asarray(tensors[name])
                record = {"name": name, "dtype": dtype_names[array.dtype],
                          "shape": list(array.shape), "offset": offset,
                          "nbytes": len(data), "crc32": crc, "meta": tensor_meta.get(name, {})}
                if encodings[name] != "raw":
                    record["encoding"] = encodings[name]
                records.append(record)
            else:
                section_records[name] = {"offset": offset, "nbytes": len(data), "crc32": crc}
        body = {"manifest": dict(manifest, format_version=FORMAT_VERSION), "tensors": records,
                "sections": section_records, "plan": plan}
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    # Offsets depend on the header's length, which depends on the offsets' digits: iterate.
    offsets = [0] * len(blobs)
    while True:
        header = header_for(offsets)
        position = _aligned(PREAMBLE.size + len(header))
        placed = []
        for _, _, data in blobs:
            placed.append(position)
            position = _aligned(position + len(data))
        if placed == offsets:
            break
        offsets = placed
    out = bytearray(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header)))
    out += header
    for (_, _, data), offset in zip(blobs, offsets):
        out += b"\x00" * (offset - len(out))
        out += data
    return bytes(out)


def _encoded(data: bytes, compression: str) -> tuple[str, bytes]:
    if compression == "raw" or not data:
        return "raw", data
    packed = zlib.compress(data, 9) if compression == "zlib" else lzma.compress(data, preset=9)
    if len(packed) > (1 - MIN_SAVING) * len(data):
        return "raw", data
    return compression, packed


def _decoded(data: memoryview, record: TensorRecord) -> bytes:
    """The raw bytes of a compressed tensor: exactly the size its dtype and shape declare."""
    size = int(np.prod(record.shape, dtype=np.int64)) * np.dtype(DTYPES[record.dtype]).itemsize
    decoder = zlib.decompressobj() if record.encoding == "zlib" else lzma.LZMADecompressor()
    try:
        raw = decoder.decompress(bytes(data), size + 1)  # one byte more reveals an overlong stream
    except (zlib.error, lzma.LZMAError) as err:
        raise ArtifactError(f"tensor '{record.name}' has a corrupt {record.encoding} stream: "
                            f"{err}") from None
    if len(raw) != size or not decoder.eof:
        raise ArtifactError(f"tensor '{record.name}' decompresses to a size other than the "
                            f"{size} bytes of {record.dtype}{list(record.shape)}")
    return raw


def read_artifact(source: str | Path | bytes | bytearray | memoryview) -> Artifact:
    """Validate and open an artifact from a path (memory-mapped) or from bytes."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with open(path, "rb") as handle:
                size = path.stat().st_size
                if size == 0:
                    raise ArtifactError(f"{path} is empty")
                buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as err:
            raise ArtifactError(f"cannot open artifact {path}: {err.strerror}") from None
    else:
        buffer = bytes(source)
    return _parse(memoryview(buffer))


def _parse(view: memoryview) -> Artifact:
    size = len(view)
    if size < PREAMBLE.size:
        raise ArtifactError(f"file of {size} bytes is too short to be an artifact")
    magic, version, reserved, header_length = PREAMBLE.unpack_from(view, 0)
    if magic != MAGIC:
        raise ArtifactError("not a nimbus artifact (wrong magic bytes)")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format version {version} is newer than this runtime "
                            f"supports (version {FORMAT_VERSION}); upgrade nimbus to load it")
    if version < 1 or reserved != 0:
        raise ArtifactError(f"unknown artifact format version {version}")
    if header_length > min(MAX_HEADER_BYTES, size - PREAMBLE.size):
        raise ArtifactError(f"header length {header_length} exceeds the file or the "
                            f"{MAX_HEADER_BYTES}-byte limit")
    header = _parse_header(bytes(view[PREAMBLE.size:PREAMBLE.size + header_length]))
    data_start = _aligned(PREAMBLE.size + header_length)
    manifest = _field(header, "manifest", dict)
    if manifest.get("format_version") != version:
        raise ArtifactError("manifest.format_version does not match the file's version")
    records = _tensor_records(_field(header, "tensors", list), size, data_start)
    sections = _section_records(_field(header, "sections", dict), size, data_start)
    _check_overlaps(list(records.values()) + list(sections.values()))
    tensors = {}
    for name, record in records.items():
        data = view[record.offset:record.offset + record.nbytes]
        if zlib.crc32(data) != record.crc32:
            raise ArtifactError(f"tensor '{name}' is corrupted (checksum mismatch)")
        if record.encoding != "raw":
            data = _decoded(data, record)
        array = np.frombuffer(data, dtype=DTYPES[record.dtype]).reshape(record.shape)
        tensors[name] = array
    section_bytes = {}
    for name, record in sections.items():
        data = bytes(view[record.offset:record.offset + record.nbytes])
        if zlib.crc32(data) != record.crc32:
            raise ArtifactError(f"section '{name}' is corrupted (checksum mismatch)")
        section_bytes[name] = data
    return Artifact(manifest, header.get("plan"), tensors, records, section_bytes)


def _parse_header(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError("header is not valid UTF-8") from None
    if _nesting_depth(text) > MAX_JSON_DEPTH:  # bound nesting before the JSON parser recurses
        raise ArtifactError(f"header JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys,
                            parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"header is not valid JSON: {err.msg} at byte {err.pos}") from None
    if not isinstance(header, dict):
        raise ArtifactError("header must be a JSON object")
    return header


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _nesting_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings, counted with numpy rather than a Python
    loop over every character (a plan header is megabytes for a large model), and summed over
    the brackets alone (MobileNetV2 int8's 1.4 MB header: 13 -> 4 ms)."""
    codes = np.frombuffer(_JSON_STRING.sub('""', text).encode(), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    brackets = opens | (codes == ord("]")) | (codes == ord("}"))
    steps = opens[brackets].astype(np.int32) * 2 - 1  # +1 for an opening bracket, -1 a closing
    return int(np.cumsum(steps).max(initial=0))


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ArtifactError(f"header repeats the key '{duplicate}'")
    return dict(pairs)


def _reject_constant(name: str):
    raise ArtifactError(f"header holds the non-standard number {name}")


def _field(container: dict, key: str, kind: type, where: str = "header"):
    if key not in container:
        raise ArtifactError(f"{where} lacks '{key}'")
    value = container[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ArtifactError(f"{where}.{key} must be {kind.__name__}")
    return value


def valid_name(name) -> bool:
    """Whether an artifact can hold ``name`` as a tensor's or section's name."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and "\x00" not in name


def _check_name(name, where: str) -> str:
    if not valid_name(name):
        raise ArtifactError(f"{where} has an invalid name {str(name)[:80]!r}")
    return name


def _check_range(offset, nbytes, size: int, data_start: int, where: str) -> None:
    for key, value in (("offset", offset), ("nbytes", nbytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ArtifactError(f"{where}.{key} must be a non-negative integer")
    if offset % ALIGNMENT or offset < data_start or offset + nbytes > size:
        raise ArtifactError(f"{where} bytes [{offset}, {offset + nbytes}) lie outside the data "
                            f"section [{data_start}, {size}) or are misaligned")


def _tensor_records(entries: list, size: int, data_start: int) -> dict[str, TensorRecord]:
    records: dict[str, TensorRecord] = {}
    for index, entry in enumerate(entries):
        where = f"tensors[{index}]"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{where} must be an object")
        name = _check_name(entry.get("name"), where)
        where = f"tensor '{name}'"
        if name in records:
            raise ArtifactError(f"{where} appears twice")
        dtype = entry.get("dtype")
        if dtype not in DTYPES:
            raise ArtifactError(f"{where} has unknown dtype {str(dtype)[:20]!r}")
        shape = _field(entry, "shape", list, where)
        if len(shape) > MAX_RANK or not all(isinstance(d, int) and not isinstance(d, bool)
                                            and 0 <= d <= MAX_ELEMENTS for d in shape):
            raise ArtifactError(f"{where} has an invalid shape")
        count = 1
        for dim in shape:
            count *= dim
            if count > MAX_ELEMENTS:
                raise ArtifactError(f"{where} has too many elements")
        nbytes = entry.get("nbytes")
        _check_range(entry.get("offset"), nbytes, size, data_start, where)
        encoding = entry.get("encoding", "raw")
        if encoding not in ENCODINGS:
            raise ArtifactError(f"{where} has unknown encoding {str(encoding)[:20]!r}")
        if encoding == "raw" and nbytes != count * np.dtype(DTYPES[dtype]).itemsize:
            raise ArtifactError(f"{where} holds {nbytes} bytes; {dtype}{shape} needs "
                                f"{count * np.dtype(DTYPES[dtype]).itemsize}")
        crc = entry.get("crc32")
        meta = entry.get("meta", {})
        if not isinstance(crc, int) or not isinstance(meta, dict):
            raise ArtifactError(f"{where} lacks a valid crc32 or meta")
        records[name] = TensorRecord(name, dtype, tuple(shape), entry["offset"], nbytes, crc, meta,
                                     encoding)
    return records


def _section_records(entries: dict, size: int, data_start: int) -> dict[str, TensorRecord]:
    records = {}
    for name, entry in entries.items():
        where = f"section '{_check_name(name, 'sections')}'"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{where} must be an object")
        _check_range(entry.get("offset"), entry.get("nbytes"), size, data_start, where)
        if not isinstance(entry.get("crc32"), int):
            raise ArtifactError(f"{where} lacks a valid crc32")
        records[name] = TensorRecord(name, "u8", (entry["nbytes"],), entry["offset"],
                                     entry["nbytes"], entry["crc32"])
    return records


def _check_overlaps(records: list[TensorRecord]) -> None:
    ordered = sorted(records, key=lambda r: r.offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.offset + before.nbytes > after.offset:
            raise ArtifactError(f"'{before.name}' and '{after.name}' overlap in the file")
