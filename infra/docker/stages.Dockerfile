# syntax=docker/dockerfile:1
# The demo ML stages (stages/): plain programs, no provenance code in them. One image for the five
# stages: the entrypoint runs `python -m $STAGE_MODULE` (the chart's catalog sets STAGE_MODULE per
# service, e.g. stages.ingest), because the controller's catalog runs an image's own entrypoint.
# Build from the repository root:  docker build -f infra/docker/stages.Dockerfile -t mlprov-stages .
# Runs as uid/gid 65532 (the distroless "nonroot" id, which the runtime's job pods run as) with a read-only root filesystem; it writes only in its workspace volume.
# Base pinned by digest: see controller.Dockerfile for where the digest comes from and how to refresh it.
ARG PYTHON_BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/stages
WORKDIR /src
COPY pyproject.toml ./
COPY stages ./stages
COPY infra/docker/run_stage.py /opt/stages/run_stage.py
# Only what the stages import (numpy, pyarrow, safetensors), at pyproject.toml's exact pins.
RUN /opt/stages/bin/python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if d.split('==')[0] in {'numpy', 'pyarrow', 'safetensors'}))" > /tmp/requirements.txt \
 && test "$(wc -l < /tmp/requirements.txt)" -eq 3 \
 && /opt/stages/bin/pip install -r /tmp/requirements.txt \
 && cp -r stages "$(/opt/stages/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stages" \
 && /opt/stages/bin/python -m compileall -q /opt/stages

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="mlprov-stages" \
      org.opencontainers.image.description="mlprov demo ML stages (python -m stages.<name>)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 stages \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin stages
COPY --from=build /opt/stages /opt/stages
ENV PATH=/opt/stages/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /workspace
USER 65532:65532
ENTRYPOINT ["python", "/opt/stages/run_stage.py"]
