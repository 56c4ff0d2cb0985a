# syntax=docker/dockerfile:1
# `nimbus serve` with the CUDA backend: PyTorch's CUDA runtime image (Python, torch and the CUDA
# libraries) plus the wheel with the `serve` and `cuda` (Triton) extras.
#
#   docker build -f docker/gpu.Dockerfile -t nimbus-gpu .
#   docker run --gpus all -p 8080:8080 -v "$PWD/models:/opt/ml/model:ro" nimbus-gpu
#
# Pick a base whose torch matches the `cuda` extra's Triton range (pyproject.toml).
ARG BASE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

# ---- build: the wheel, against the base's own Python ------------------------------------------------
FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- serve ------------------------------------------------------------------------------------------
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(echo /wheels/nimbus-*.whl)[serve,cuda]"
RUN useradd --create-home --uid 10001 nimbus
USER nimbus
WORKDIR /home/nimbus
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('AIP_HTTP_PORT') or os.environ.get('SAGEMAKER_BIND_TO_PORT') or '8080'; urllib.request.urlopen(f'http://127.0.0.1:{port}/ping', timeout=2)"]
# The server loads artifacts for the CPU until it takes a target option (`--target cuda`); the
# image is ready for it: torch, Triton and the CUDA libraries are in place.
# The server runs its models on the GPU (`--target`'s default comes from here).
ENV NIMBUS_TARGET=cuda
ENTRYPOINT ["python", "-m", "nimbus.runtime.server.entrypoint"]
CMD []
