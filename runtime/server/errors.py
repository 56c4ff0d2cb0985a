"""The one error type a request can end in: an HTTP status and a message for the client.

Messages name the input, field or limit at fault and never carry paths or stack traces.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request that gets ``status`` and the body ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)
