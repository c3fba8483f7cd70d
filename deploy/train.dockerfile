# syntax=docker/dockerfile:1
# Training and the rest of the lifecycle: any `modelcycle` command, the pipeline by default.
# Build from the repository root: docker build -f deploy/train.dockerfile -t modelcycle-train .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# CPU-only torch (see api.dockerfile); for GPUs, drop --index-url to get PyPI's CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt .
# Tasks from other packages, with their dependencies (see api.dockerfile).
ARG EXTRA_PACKAGES=""
RUN if [ -n "$EXTRA_PACKAGES" ]; then pip install -c constraints.txt $EXTRA_PACKAGES; fi

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# git: lineage records the SHA of a mounted checkout when there is one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 modelcycle \
    && mkdir -p /workspace/mlflow && chown -R modelcycle /workspace
# A named volume mounted where the image has no directory is created owned by root, so
# compose's mlflow service (the same image, uid 10001) could not write its database there.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELCYCLE_HOME=/workspace
USER 10001
WORKDIR /workspace
ENTRYPOINT ["modelcycle"]
CMD ["pipeline", "twins"]
