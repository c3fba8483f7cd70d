# syntax=docker/dockerfile:1
# The model server: `modelcycle serve` of the models named by MODELCYCLE_MODELS.
# Build from the repository root: docker build -f deploy/api.dockerfile -t modelcycle-api .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The server runs ONNX Runtime only: what it imports, pinned by constraints.txt, then the
# project without its training dependencies (torch, Lightning, timm ... stay out).
COPY constraints.txt deploy/api-requirements.txt ./
RUN pip install -c constraints.txt -r api-requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps .
# Tasks from other packages, by requirement (a name, or a path in the build context), each
# without its dependencies: the server imports only a task's `modelcycle.adapters` module.
# docker build --build-arg EXTRA_PACKAGES="blobs-plugin==0.1.0" ...
ARG EXTRA_PACKAGES=""
# The argument pins its versions:
# hadolint ignore=DL3013
RUN if [ -n "$EXTRA_PACKAGES" ]; then pip install --no-deps $EXTRA_PACKAGES; fi

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
