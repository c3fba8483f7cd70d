# syntax=docker/dockerfile:1
# The model server: `modelcycle serve` of the models named by MODELCYCLE_MODELS.
# Build from the repository root: docker build -f deploy/api.dockerfile -t modelcycle-api .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# CPU-only torch from PyTorch's CPU index: PyPI's default build carries CUDA (several GB).
# The pins match pyproject.toml; constraints.txt then pins everything else.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN useradd --create-home --uid 10001 modelcycle \
    && mkdir /workspace && chown modelcycle /workspace
COPY --from=build /opt/venv /opt/venv
COPY deploy/api-entrypoint.sh /usr/local/bin/api-entrypoint.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELCYCLE_HOME=/workspace \
    MODELCYCLE_MODELS=twins@champion \
    HOST=0.0.0.0 \
    PORT=8000
USER 10001
WORKDIR /workspace
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/healthz\", timeout=2)"]
ENTRYPOINT ["/usr/local/bin/api-entrypoint.sh"]
