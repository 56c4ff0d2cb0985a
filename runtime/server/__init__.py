"""``nimbus serve``: KServe v2, SageMaker and Vertex AI contracts over compiled artifacts.

Needs only the runtime (numpy) and the ``serve`` extra (starlette, uvicorn, prometheus-client).

    from nimbus.runtime.server import ServerConfig, create_app
    app = create_app({"lenet": nimbus.load("lenet.nimbus")}, ServerConfig(max_queue=32))
"""

from .app import DEFAULT_MAX_BODY_BYTES, Server, ServerConfig, create_app
from .errors import RequestError
from .main import load_models, serve
from .models import ServedModel

__all__ = ["DEFAULT_MAX_BODY_BYTES", "RequestError", "ServedModel", "Server", "ServerConfig",
           "create_app", "load_models", "serve"]
