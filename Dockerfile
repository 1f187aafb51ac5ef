# prefix-server's image: `prefix-server serve` on the embedded MiniLM backbone. Two variants:
#   CPU (default):  docker build -t prefix-server .
#   GPU:            docker build -t prefix-server:gpu --build-arg VARIANT=gpu .
# The GPU variant installs torch's CUDA 12.8 wheel (torch==2.13.0+cu128 from download.pytorch.org/whl/cu128;
# another CUDA build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 or .../cu130).
# The wheel bundles the CUDA runtime; the host needs only the NVIDIA driver and the container toolkit.
ARG VARIANT=cpu

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFIX_SERVER_HOST=0.0.0.0 \
    PREFIX_SERVER_PORT=8000 \
    PREFIX_SERVER_DATA_DIR=/data \
    PREFIX_SERVER_PREFIXES_DIR=/app/prefixes

FROM base AS cpu
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cpu

FROM base AS gpu
# Triton (the attention kernel, PREFIX_SERVER_ATTENTION=auto) compiles its kernel launchers with a C compiler at first use.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cu128 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PREFIX_SERVER_DEVICE=cuda \
    PREFIX_SERVER_DTYPE=float16

FROM ${VARIANT}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
WORKDIR /app
# torch first, from the variant's index, so the project's loose `torch>=` requirement is already met.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL:-$TORCH_INDEX_URL_DEFAULT}"
COPY pyproject.toml README.md ./
COPY server ./server
COPY training ./training
COPY prefixes ./prefixes
# The image serves one server or a replica of many (PostgreSQL + S3): the replicas extra is in it.
RUN pip install ".[replicas]" \
    && useradd --create-home --uid 10001 prefix \
    && mkdir -p /data && chown prefix /data

# Numeric, so Kubernetes' runAsNonRoot can verify the user without a runAsUser of its own.
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PREFIX_SERVER_PORT\"]}/readyz', timeout=2)"
CMD ["prefix-server", "serve"]
