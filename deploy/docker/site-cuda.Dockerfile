# A site with an NVIDIA GPU: as site.Dockerfile, with PyTorch's CUDA wheels.
#   docker build -f deploy/docker/site-cuda.Dockerfile -t umedpt-fl-site-cuda:0.1.0 .
#   docker run --gpus all ... umedpt-fl-site-cuda:0.1.0 client ...
#
# Still on Flower's official SuperNode image (flwr 1.42.0, as pyproject.toml pins): Flower
# publishes no CUDA variant of flwr/supernode (its CUDA base images are not part of the
# release matrix, framework/dev/build-docker-image-matrix.py), and no nvidia/cuda base is
# needed either: PyTorch's CUDA wheels carry the CUDA runtime libraries (the nvidia-* wheels),
# so the image needs only the host's driver, which the NVIDIA Container Toolkit mounts in.
# This keeps one Python and one Flower build for CPU and GPU sites.
FROM flwr/supernode:1.42.0-py3.11-ubuntu24.04

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# PyTorch's CUDA 12.4 wheels (driver 550 or later), downloaded on the build host; another
# CUDA build: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"

COPY --chown=app:app pyproject.toml README.md LICENSE /tmp/umedpt-fl/
COPY --chown=app:app umedpt /tmp/umedpt-fl/umedpt
COPY --chown=app:app umedpt_fl /tmp/umedpt-fl/umedpt_fl
COPY --chown=app:app federation /tmp/umedpt-fl/federation
COPY --chown=app:app client /tmp/umedpt-fl/client
COPY --chown=app:app server /tmp/umedpt-fl/server
COPY --chown=app:app strategies /tmp/umedpt-fl/strategies
RUN pip install --no-cache-dir /tmp/umedpt-fl && rm -rf /tmp/umedpt-fl

USER root
RUN mkdir -p /var/lib/umedpt-fl && chown app:app /var/lib/umedpt-fl
USER app
VOLUME ["/var/lib/umedpt-fl"]

ENV PIP_NO_INDEX=1 \
    UV_OFFLINE=1

ENTRYPOINT ["umedpt-fl"]
CMD ["client", "--help"]
