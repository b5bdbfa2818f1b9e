# The coordinator: `umedpt-fl server` (Flower's SuperLink on loopback, the Fleet-only gateway,
# the ServerApp) on Flower's official SuperLink image, with umedpt-fl and its dependencies
# preinstalled, so nothing is fetched at run time. Build on a host with network, from the
# repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t umedpt-fl-coordinator:0.1.0 .
#
# The tag is the Flower release pyproject.toml pins (flwr 1.42.0). Not the plain
# `flwr/superlink:1.42.0`: that one is Alpine (musl), for which PyTorch publishes no wheels;
# Flower publishes the SuperLink's Ubuntu variant for Python 3.13 only. The image runs as
# Flower's user `app` (UID 49999) with its virtualenv in /python/venv.
FROM flwr/superlink:1.42.0-py3.13-ubuntu24.04

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch's CPU wheels (downloaded on the build host): the coordinator only averages weights.
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

# The output folder (SuperLink database, checkpoints, report): a volume owned by `app`.
USER root
RUN mkdir -p /var/lib/umedpt-fl && chown app:app /var/lib/umedpt-fl
USER app
VOLUME ["/var/lib/umedpt-fl"]

# From here on no package index is needed, nor allowed.
ENV PIP_NO_INDEX=1 \
    UV_OFFLINE=1

# `umedpt-fl server` supervises Flower's processes (never bare flower-superlink); the
# command is rendered by deploy/render.py (see deploy/compose.yaml, deploy/k8s/).
ENTRYPOINT ["umedpt-fl"]
CMD ["server", "--help"]
