# picserve: one image for the API, the workers and the CLI; the command chooses (docs/container.md).
#
#   docker build -t picserve .                                                          # CUDA torch (PyPI)
#   docker build -t picserve --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU
#
#   docker run … picserve serve                  # API + workers + embedded PostgreSQL in /data (the default)
#   docker run … picserve serve --workers 0      # the API alone (PICSERVE_DATABASE_URL: a shared PostgreSQL)
#   docker run … picserve worker --device cuda:0 # one worker (one per GPU)
#   docker exec CONTAINER picserve keys create --name me
#
# Layers, slowest-changing first: the OS packages, torch, the dependencies at the exact versions of
# requirements.lock (pip constraints, as `make install`), and last the project as a built wheel. A source
# change rebuilds only the wheel and the layer installing it; a change of requirements.lock or of
# pyproject.toml's dependency list rebuilds the dependencies (not torch).

# Debian bookworm: its python3 is 3.11, as the project needs (>=3.11) and the torch wheels are built for
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# python3-venv: the image's own virtual environment; tini: PID 1, forwards SIGTERM (a worker's graceful
# stop) and reaps the processes `serve` starts
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# The project's wheel and its runtime dependency list, each made from the source in a stage of its own:
# COPY --from compares contents, so an unchanged list keeps the dependency layer below cached.
FROM base AS wheel
# this stage's images are not part of the image: the label tells them apart (`podman image prune --filter`)
LABEL org.opencontainers.image.title="picserve-wheel"
# a reproducible wheel (fixed timestamps in the zip): the same source gives the same bytes, so the layer that
# installs it stays cached even when this stage runs again
ENV SOURCE_DATE_EPOCH=315532800
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /tmp/build \
 && /tmp/build/bin/pip wheel --no-cache-dir --quiet --no-deps --wheel-dir /dist . \
 && python3 -c 'import tomllib, sys; sys.stdout.write("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]) + "\n")' > /dist/dependencies.txt

FROM base AS runtime
LABEL org.opencontainers.image.title="picserve" \
      org.opencontainers.image.description="Self-hosted SDXL image generation behind the PICPIK cloud API" \
      org.opencontainers.image.licenses="Apache-2.0"
# Where torch comes from. Empty: PyPI, whose Linux x86_64 torch is the CUDA build (several GB with its
# nvidia-* wheels), for GPU hosts with the NVIDIA container toolkit. A CPU-only host (or a smaller image
# for API nodes): https://download.pytorch.org/whl/cpu. Either way torch==2.13.0, as requirements.lock.
ARG TORCH_INDEX_URL=
ENV VIRTUAL_ENV=/opt/picserve \
    PATH=/opt/picserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements.lock /opt/picserve/requirements.lock
# torch first, pinned: an unpinned torch pulled by a dependency would fetch the CUDA build on any host
RUN python3 -m venv /opt/picserve \
 && pip install --no-cache-dir --quiet -c /opt/picserve/requirements.lock \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch==2.13.0

COPY --from=wheel /dist/dependencies.txt /opt/picserve/dependencies.txt
# rembg's matting (pymatting) is compiled by numba at its first import (about 80 s on 2 cores) and cached
# beside it: once here, not in the first worker that cuts out a background (as `make install` does)
RUN pip install --no-cache-dir --quiet -c /opt/picserve/requirements.lock \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /opt/picserve/dependencies.txt \
 && python -c "import rembg"

# the account picserve runs as (the embedded PostgreSQL refuses root; its home holds user-wide caches) and
# the folders its volumes start from: a new named volume takes their owner
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/picserve --shell /usr/sbin/nologin picserve \
 && mkdir -p /data/results /models \
 && chown -R picserve:picserve /data /models

COPY --from=wheel /dist/*.whl /tmp/
RUN pip install --no-cache-dir --quiet --no-deps /tmp/picserve-*.whl \
 && rm /tmp/picserve-*.whl \
 && picserve --version

USER picserve
WORKDIR /home/picserve
ENV PICSERVE_DATA_DIR=/data \
    PICSERVE_MODELS_DIR=/models \
    PICSERVE_HOST=0.0.0.0 \
    PICSERVE_PORT=8080
VOLUME ["/data", "/models"]
EXPOSE 8080
# the API's /healthz (a container running only `picserve worker` has no API: its healthcheck is turned off
# in compose.yaml)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PICSERVE_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "picserve"]
CMD ["serve"]
