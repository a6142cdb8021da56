# syntax=docker/dockerfile:1
#
# One image for every node of a bertserve cluster: the Ray head, the GPU workers and the
# gRPC front end (see docker-compose.yml). Ray needs the same Python and Ray version on
# every node, and building them all from this one image gives you that.
#
# Base image: python:3.11-slim, not nvidia/cuda.
#   * PyPI's torch wheel for Linux x86_64 is a CUDA build. It brings its own CUDA runtime,
#     cuBLAS, cuDNN and NCCL as nvidia-* wheels (several GB). The only other thing a GPU
#     needs is the driver (libcuda), and the NVIDIA Container Toolkit mounts that from the
#     host when a container reserves a GPU (compose: deploy.resources.reservations.devices).
#     An nvidia/cuda runtime base would add a second copy of the CUDA libraries (several GB)
#     that torch never loads, and that base has no Python, so one would have to be
#     installed on top.
#   * 3.11 is the version the project type-checks against (tool.mypy python_version).
#   * The front end and the head use no GPU. They run the same image without a GPU
#     reservation (the front end never imports torch).
#
# Build:  docker build -t bertserve:0.1.0 .
#         (or `docker compose build`; .dockerignore keeps the context small)
FROM python:3.11-slim

# HF_HOME: the Hugging Face cache. docker-compose.yml mounts the shared named volume
# `hf-cache` at /cache. RAY_USAGE_STATS_ENABLED=0: `ray start` and the front end's
# ray.init() neither prompt about nor upload usage stats.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    RAY_USAGE_STATS_ENABLED=0

# Non-root user. /cache is created here, owned by that user, so that a fresh named volume
# mounted on it copies this ownership and the user can write to it.
RUN groupadd --system --gid 1000 bertserve \
 && useradd --system --uid 1000 --gid bertserve --create-home --home-dir /home/bertserve bertserve \
 && mkdir -p /cache/huggingface /cache/bertserve-demo \
 && chown -R bertserve:bertserve /cache

WORKDIR /opt/bertserve/src

# Versions: constraints.txt pins torch, transformers, ray, grpcio, protobuf and a few more, the
# same file the Makefile installs with, so the image runs what the tests ran. It is copied first
# and on its own, so that editing code does not invalidate the torch layer.
COPY constraints.txt ./

# torch gets its own layer, before the project sources, so that editing code does not download
# it again (the `pip install` below finds the pinned torch already there and keeps it).
# The version comes from constraints.txt; TORCH_INDEX picks the build. The default, PyPI, gives
# the CUDA build (with its nvidia-* wheels), which needs a host NVIDIA driver recent enough for
# its CUDA version. For an older driver, take a build for an older CUDA from PyTorch's index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 ...
# Never .../whl/cpu here: this one image also runs the GPU workers, which need CUDA. (For a
# CPU-only set-up outside Docker, see the Makefile's TORCH_INDEX.)
ARG TORCH_INDEX=https://pypi.org/simple
RUN pip install --constraint constraints.txt --index-url "${TORCH_INDEX}" torch

# Copy only what the two distributions need to build. The client ships the generated gRPC
# stubs (client/bertserve/v1), so protos/ and scripts/ are not needed.
COPY pyproject.toml README.md ./
COPY client/ ./client/
COPY server/ ./server/
COPY workers/ ./workers/
COPY jobs/ ./jobs/

# Both distributions go in one resolve, so bertserve's pin `bertserve-client==0.1.0` is met
# by the local client and not looked up on PyPI. constraints.txt pins the key dependencies.
RUN pip install --constraint constraints.txt ./client . \
 && bertserve --help >/dev/null \
 && ray --version

USER bertserve
WORKDIR /home/bertserve

# The front end's gRPC port (the `serve` default, --port 50051) and the Prometheus metrics
# port that docker-compose.yml passes to the front end (--metrics-port 9464; off by default).
EXPOSE 50051 9464

# Each compose service passes its own command. With no command, the image prints the CLI usage.
CMD ["bertserve", "--help"]
