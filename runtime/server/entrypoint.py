"""The serving container's entry point: ``python -m nimbus.runtime.server.entrypoint [serve] ...``.

SageMaker starts a container as ``docker run IMAGE serve``; KServe, Vertex AI and Azure ML run it
as it is. Either way the rest of the command line goes to ``python -m nimbus.runtime.server``,
with two container defaults: listen on all interfaces (loopback is unreachable from outside a
container) unless ``--host`` is given, and serve the platform's model folder when no argument
names a model file or folder: ``NIMBUS_MODEL_DIR``, ``SM_MODEL_DIR`` or ``AZUREML_MODEL_DIR``
when set, else KServe's ``/mnt/models`` when present, else SageMaker's ``/opt/ml/model``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .main import SAGEMAKER_MODEL_DIR
from .main import main as server_main

MODEL_DIR_VARIABLES = ("NIMBUS_MODEL_DIR", "SM_MODEL_DIR", "AZUREML_MODEL_DIR")
KSERVE_MODEL_DIR = Path("/mnt/models")


def model_dir(environ: Mapping[str, str]) -> Path:
    for variable in MODEL_DIR_VARIABLES:
        if environ.get(variable):
            return Path(environ[variable])
    return KSERVE_MODEL_DIR if KSERVE_MODEL_DIR.is_dir() else SAGEMAKER_MODEL_DIR


def server_args(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The server's command line for the container's arguments ``argv``."""
    args = list(argv[1:] if argv[:1] == ["serve"] else argv)
    if not any(arg == "--host" or arg.startswith("--host=") for arg in args):
        args += ["--host", "0.0.0.0"]
    # An option's value is never an existing path here, except --model-repository's, and with
    # that the repository alone is meant to be served.
    if not any(Path(arg).exists() for arg in args if not arg.startswith("-")):
        args.append(str(model_dir(environ)))
    return args


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> None:
    server_main(server_args(sys.argv[1:] if argv is None else argv, environ))


if __name__ == "__main__":
    main()
