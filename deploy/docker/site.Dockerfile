# A site: `umedpt-fl client` (Flower's SuperNode and the ClientApps it starts) on Flower's
# official SuperNode image, CPU only, with umedpt-fl and its dependencies preinstalled, so
# that a hospital machine needs no package index. Build on a host with network, from the
# repository root:
#   docker build -f deploy/docker/site.Dockerfile -t umedpt-fl-site:0.1.0 .
#
# The tag is the Flower release pyproject.toml pins (flwr 1.42.0), in its Ubuntu variant
# (glibc: PyTorch's wheels) with the Python the project is tested on. The image runs as
# Flower's user `app` (UID 49999): mounted keys and data must be readable by it.
FROM flwr/supernode:1.42.0-py3.11-ubuntu24.04

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch's CPU wheels, downloaded on the build host (site-cuda.Dockerfile for GPUs).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"

COPY --chown=app:app pyproject.toml README.md LICENSE /tmp/umedpt-fl/
COPY --chown=app:app umedpt /tmp/umedpt-fl/umedpt
COPY --chown=app:app umedpt_fl /tmp/umedpt-fl/umedpt_fl
COPY --chown=app:app federation /tmp/umedpt-fl/federation
COPY --chown=app:app client /tmp/umedpt-fl/client
COPY --chown=app:app server /tmp/umedpt-fl/server
COPY --chown=app:app strategies /tmp/umedpt-fl/strategies
RUN pip install --no-cache-dir /tmp/umedpt-fl && rm -rf /tmp/umedpt-fl

# The site's state_dir (heads, optimizer state, privacy ledger, supernode.log): a volume
# owned by `app`; site files for containers say state_dir = "/var/lib/umedpt-fl/state".
USER root
RUN mkdir -p /var/lib/umedpt-fl && chown app:app /var/lib/umedpt-fl
USER app
VOLUME ["/var/lib/umedpt-fl"]

ENV PIP_NO_INDEX=1 \
    UV_OFFLINE=1

# `umedpt-fl client` supervises the SuperNode (never bare flower-supernode); the command is
# rendered by deploy/render.py (see deploy/compose.yaml, deploy/k8s/site.yaml).
ENTRYPOINT ["umedpt-fl"]
CMD ["client", "--help"]
