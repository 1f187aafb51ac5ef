# CPU image of prefix-server: `prefix-server serve` on the embedded MiniLM backbone.
# For a CUDA build of torch:  docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFIX_SERVER_HOST=0.0.0.0 \
    PREFIX_SERVER_PORT=8000 \
    PREFIX_SERVER_DATA_DIR=/data \
    PREFIX_SERVER_PREFIXES_DIR=/app/prefixes

WORKDIR /app
# torch first, from the chosen index, so the project's loose `torch>=` requirement is already met.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY server ./server
COPY prefixes ./prefixes
RUN pip install . \
    && useradd --create-home --uid 10001 prefix \
    && mkdir -p /data && chown prefix /data

# Numeric, so Kubernetes' runAsNonRoot can verify the user without a runAsUser of its own.
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PREFIX_SERVER_PORT\"]}/readyz', timeout=2)"
CMD ["prefix-server", "serve"]
