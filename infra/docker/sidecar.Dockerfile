# syntax=docker/dockerfile:1
# The provenance sidecar (`mlprov sidecar`), run by the Kubernetes runtime as a native sidecar
# (an init container with restartPolicy Always) beside each job; also the init step's image.
# Build from the repository root:  docker build -f infra/docker/sidecar.Dockerfile -t mlprov-sidecar .
# Runs as uid/gid 65532 (the distroless "nonroot" id, which the runtime's job pods run as) with a read-only root filesystem; the signing identity is mounted read-only
# into $MLPROV_HOME/keys by the runtime; the spool and ledger live in the job's workspace volume.
# Base pinned by digest: see controller.Dockerfile for where the digest comes from and how to refresh it.
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
RUN /opt/mlprov/bin/pip install . \
 && /opt/mlprov/bin/python -m compileall -q /opt/mlprov/lib

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="mlprov-sidecar" \
      org.opencontainers.image.description="mlprov provenance sidecar (mlprov sidecar)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 mlprov \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/mlprov --no-create-home --shell /usr/sbin/nologin mlprov
COPY --from=build /opt/mlprov /opt/mlprov
ENV PATH=/opt/mlprov/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MLPROV_HOME=/var/lib/mlprov
WORKDIR /workspace
USER 65532:65532
ENTRYPOINT ["mlprov"]
CMD ["sidecar"]
