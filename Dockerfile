# syntax=docker/dockerfile:1
# Titans server images. No Docker engine runs on our machines, so every step here is a script that
# CI runs too (scripts/setup.sh, build.sh, install.sh, runtime-packages.sh; `scripts/check-dockerfile.sh`
# checks that everything this file copies or runs exists).
#
#   CPU (default target):  docker build -t titans:cpu .
#   CUDA:                  docker build --target cuda -t titans:cuda \
#                            --build-arg LIBTORCH_CUDA=third_party/libtorch .
#     (a CUDA-enabled LibTorch unpacked into the build context; see docs/deploy.md)
#
# Both run as the non-root user `titans` (uid 10001), serve the built-in default model, keep
# session state in /var/lib/titans (mount a volume there) and expose gRPC 50051 and metrics 9464.

ARG DEBIAN_IMAGE=debian:bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- CPU build: the README's setup script, then the build, then a self-contained install ----
FROM ${DEBIAN_IMAGE} AS build
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh
COPY . .
RUN TITANS_CMAKE_ARGS="-DTITANS_BUILD_TESTS=OFF -DTITANS_CUDA_KERNELS=OFF" scripts/build.sh \
      titans-server titans-cli titans-generate titans-init-model titans_sentencepiece \
 && scripts/install.sh /opt/titans \
 && scripts/runtime-packages.sh /opt/titans > /opt/titans/runtime-packages.txt

# ---- CPU runtime: only the shared libraries' packages, no compilers ----
FROM ${DEBIAN_IMAGE}-slim AS cpu
COPY --from=build /opt/titans/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --home-dir /var/lib/titans --create-home titans
COPY --from=build /opt/titans /opt/titans
USER 10001
VOLUME /var/lib/titans
EXPOSE 50051 9464
ENTRYPOINT ["/opt/titans/bin/titans-server"]
CMD ["--host=0.0.0.0", "--model_dir=/opt/titans/models/default", "--state_dir=/var/lib/titans"]

# ---- CUDA build: NVIDIA's CUDA base (Ubuntu 24.04: the same gRPC 1.51 / Abseil / protobuf as
# Debian 12, so the same setup script applies), a CUDA-enabled LibTorch from the build context ----
FROM ${CUDA_DEVEL_IMAGE} AS cuda-build
ARG LIBTORCH_CUDA=third_party/libtorch
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh
COPY . .
RUN test -f "${LIBTORCH_CUDA}/share/cmake/Torch/TorchConfig.cmake" \
 && TITANS_CMAKE_ARGS="-DTITANS_BUILD_TESTS=OFF -DTITANS_CUDA=ON -DCMAKE_PREFIX_PATH=/src/${LIBTORCH_CUDA}" \
      scripts/build.sh titans-server titans-cli titans-generate titans-init-model titans_sentencepiece \
 && scripts/install.sh /opt/titans \
 && mkdir -p /opt/titans/lib && cp -a "${LIBTORCH_CUDA}"/lib/*.so* /opt/titans/lib/ \
 && LD_LIBRARY_PATH=/opt/titans/lib scripts/runtime-packages.sh /opt/titans \
      > /opt/titans/runtime-packages.txt

# ---- CUDA runtime ----
FROM ${CUDA_RUNTIME_IMAGE} AS cuda
COPY --from=cuda-build /opt/titans/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --home-dir /var/lib/titans --create-home titans
COPY --from=cuda-build /opt/titans /opt/titans
ENV LD_LIBRARY_PATH=/opt/titans/lib
USER 10001
VOLUME /var/lib/titans
EXPOSE 50051 9464
ENTRYPOINT ["/opt/titans/bin/titans-server"]
CMD ["--host=0.0.0.0", "--device=cuda", "--model_dir=/opt/titans/models/default", \
     "--state_dir=/var/lib/titans"]

# The default target is the CPU image.
FROM cpu
