# syntax=docker/dockerfile:1
# The ML service controller: `mlprov serve` (and `mlflow server`, which the chart runs from this image).
# Build from the repository root:  docker build -f infra/docker/controller.Dockerfile -t mlprov-controller .
# Runs as uid/gid 65532 (the distroless "nonroot" id, which the runtime's job pods run as) with a read-only root filesystem: writes go to $MLPROV_HOME (a volume) and /tmp.
#
# The base is pinned by digest (the multi-arch index of python:3.11-slim-bookworm). No registry is
# reachable where this file was written: the digest was taken from public build files, not checked
# here; the first CI build checks it (a pull by digest fails if the registry does not serve it).
# Refresh: docker buildx imagetools inspect python:3.11-slim-bookworm
ARG PYTHON_BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlprov
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY provenance ./provenance
COPY plugins ./plugins
COPY stages ./stages
# The exact pins of pyproject.toml (the `dependencies` list); no extras: Airflow is not in this image.
RUN /opt/mlprov/bin/pip install . \
 && /opt/mlprov/bin/python -m compileall -q /opt/mlprov/lib

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="mlprov-controller" \
      org.opencontainers.image.description="mlprov ML service controller (mlprov serve)" \
      org.opencontainers.image.licenses="Apache-2.0"
# git: the dispatcher resolves a task's code ref to a commit (`git ls-remote`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 65532 mlprov \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/mlprov --no-create-home --shell /usr/sbin/nologin mlprov \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/mlprov
COPY --from=build /opt/mlprov /opt/mlprov
ENV PATH=/opt/mlprov/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLPROV_HOME=/var/lib/mlprov
WORKDIR /var/lib/mlprov
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["mlprov"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
