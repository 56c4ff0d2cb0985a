# syntax=docker/dockerfile:1
# `nimbus serve` on the CPU: the runtime (numpy) and the `serve` extra, nothing of the compiler.
#
#   docker build -f docker/cpu.Dockerfile -t nimbus-cpu .
#   docker run -p 8080:8080 -v "$PWD/models:/opt/ml/model:ro" nimbus-cpu          # or ... nimbus-cpu serve
#
# Models come from the platform's folder (docs/deploy.md): SageMaker's /opt/ml/model, KServe's
# /mnt/models, AZUREML_MODEL_DIR, or NIMBUS_MODEL_DIR; options after the image name (or after
# `serve`) go to the server, e.g. `--max-batch-size 8`.
ARG PYTHON_VERSION=3.12

# ---- build: the wheel, with its C++ extension ------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- serve: the slim base and the wheel alone -------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed from a bind mount, so that no layer keeps the wheel.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(echo /wheels/nimbus-*.whl)[serve]"
RUN useradd --create-home --uid 10001 nimbus
USER nimbus
WORKDIR /home/nimbus
EXPOSE 8080
# /ping is 200 once the models are loaded, 503 while draining or while a model run hangs. The port
# follows main.default_port: AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT, else 8080. Standard library
# only: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('AIP_HTTP_PORT') or os.environ.get('SAGEMAKER_BIND_TO_PORT') or '8080'; urllib.request.urlopen(f'http://127.0.0.1:{port}/ping', timeout=2)"]
# Exec form: the server is PID 1 and gets the platform's SIGTERM, drains and exits 0.
ENTRYPOINT ["python", "-m", "nimbus.runtime.server.entrypoint"]
CMD []
