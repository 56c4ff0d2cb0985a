"""The serving container's entry point: ``python -m nimbus.runtime.server.entrypoint [serve] ...``.

SageMaker starts a container as ``docker run IMAGE serve``; KServe, Vertex AI and Azure ML run it
as it is. Either way the rest of the command line goes to ``python -m nimbus.runtime.server``,
listening on all interfaces (loopback is unreachable from outside a container) unless ``--host``
is given. With no model named, the server finds the platform's models itself
(``main.default_model_location``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .main import main as server_main


def server_args(argv: Sequence[str]) -> list[str]:
    """The server's command line for the container's arguments ``argv``."""
    args = list(argv[1:] if argv[:1] == ["serve"] else argv)
    if not any(arg == "--host" or arg.startswith("--host=") for arg in args):
        args += ["--host", "0.0.0.0"]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    server_main(server_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
