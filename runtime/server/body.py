"""Request bodies: read under a size limit, parse JSON with bounded nesting and no duplicate keys."""

from __future__ import annotations

import json

from starlette.requests import Request

from .errors import RequestError, bad_request


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to be over ``limit`` bytes: from
    Content-Length before reading, and while reading a chunked (or lying) stream."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 20:
            raise bad_request("Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> RequestError:
    return RequestError(413, f"request body is over the limit of {limit} bytes")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key '{key[:64]}'")
        result[key] = value
    return result


MAX_DEPTH = 64


def parse_json(data: bytes | memoryview, what: str = "request body"):
    """Parse JSON (UTF-8) or raise 400 naming the problem: syntax, encoding, duplicate keys,
    nesting deeper than MAX_DEPTH (checked without recursion, so no RecursionError)."""
    data = bytes(data)
    if _too_deep(data):
        raise bad_request(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        raise bad_request(f"{what}: {err}") from None
    except UnicodeDecodeError:
        raise bad_request(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise bad_request(f"{what} is not valid JSON: {err.msg} at line {err.lineno} column "
                          f"{err.colno}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer with thousands of digits
        raise bad_request(f"{what} is not acceptable JSON: {str(err)[:120]}") from None


def _too_deep(data: bytes) -> bool:
    """Whether brackets outside strings nest deeper than MAX_DEPTH. Linear time: strings are
    skipped with bytes.find, never a backtracking regex."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    position = 0
    length = len(data)
    # Only the bytes that can change the state matter; find the next one of them each time.
    while position < length:
        next_quote = data.find(b'"', position)
        end = length if next_quote < 0 else next_quote
        segment = data[position:end]
        if segment:
            # depth inside a segment without strings: running sum of opens minus closes
            if _segment_max_depth(segment, depth) > MAX_DEPTH:
                return True
            depth += (segment.count(b"[") + segment.count(b"{")
                      - segment.count(b"]") - segment.count(b"}"))
        if next_quote < 0:
            return False
        position = _string_end(data, next_quote + 1)
    return False


def _segment_max_depth(segment: bytes, depth: int) -> int:
    opens = segment.count(b"[") + segment.count(b"{")
    if depth + opens <= MAX_DEPTH:
        return depth + opens
    import numpy as np

    codes = np.frombuffer(segment, np.uint8)
    steps = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int64)
    steps -= ((codes == ord("]")) | (codes == ord("}")))
    return depth + int(np.cumsum(steps).max())


def _string_end(data: bytes, start: int) -> int:
    """Index just past the quote closing a string whose content starts at ``start``."""
    while True:
        quote = data.find(b'"', start)
        if quote < 0:
            return len(data)
        backslashes = 0
        while data[quote - 1 - backslashes] == 0x5C:  # count the backslashes before the quote
            backslashes += 1
        if backslashes % 2 == 0:
            return quote + 1
        start = quote + 1
