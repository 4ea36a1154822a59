# syntax=docker/dockerfile:1
# Worker and job images, two targets:
#   docker build --target cpu  -t visionstream:cpu .
#   docker build --target cuda -t visionstream:cuda .
# Model weights: mount a folder at /opt/visionstream/models and set VISIONSTREAM_MODEL_WEIGHTS to the file
# in it, or bake them in: copy the file into deploy/weights/ (the only part of that folder the build sees)
# and build with --build-arg MODEL_WEIGHTS=/opt/visionstream/models/squeezenet1_1_imagenet.pth.
# The final stages hold no compiler: torch.compile cannot work there, so the images run the model eagerly.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The official PyTorch runtime image (no CUDA toolkit or compilers) for the torch version the Makefile pins.
ARG CUDA_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# The package itself as a wheel, built once for both targets.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY visionstream visionstream
COPY agents agents
COPY tables tables
COPY migrations migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# CPU: a venv with torch's CPU wheels (PyPI's x86 torch carries the CUDA libraries, gigabytes unused here).
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1
COPY --from=wheel /wheels /wheels
# facenet-pytorch 2.6.0 pins torch<2.3 and numpy<2: installed alone, as the Makefile does.
RUN pip install --no-cache-dir /wheels/visionstream-*.whl \
 && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0

FROM ${PYTHON_IMAGE} AS cpu
COPY --from=cpu-build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/visionstream visionstream \
 && install -d -o 10001 -g 10001 /var/lib/visionstream
ARG MODEL_WEIGHTS=""
COPY deploy/weights/ /opt/visionstream/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VISIONSTREAM_WEB_HOST=0.0.0.0 \
    VISIONSTREAM_DATA_DIR=/var/lib/visionstream \
    VISIONSTREAM_COMPILE_MODEL=false \
    VISIONSTREAM_MODEL_WEIGHTS=${MODEL_WEIGHTS}
WORKDIR /home/visionstream
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["faust", "-A", "visionstream", "worker"]
CMD ["-l", "info"]

# CUDA: the base image's torch and torchvision, seen through a venv that holds everything else.
FROM ${CUDA_IMAGE} AS cuda-build
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheel /wheels /wheels
RUN python -m venv --system-site-packages /opt/venv \
 && pip install --no-cache-dir /wheels/visionstream-*.whl \
 && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0

FROM ${CUDA_IMAGE} AS cuda
COPY --from=cuda-build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/visionstream visionstream \
 && install -d -o 10001 -g 10001 /var/lib/visionstream
ARG MODEL_WEIGHTS=""
COPY deploy/weights/ /opt/visionstream/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VISIONSTREAM_WEB_HOST=0.0.0.0 \
    VISIONSTREAM_DATA_DIR=/var/lib/visionstream \
    VISIONSTREAM_COMPILE_MODEL=false \
    VISIONSTREAM_DEVICE=cuda \
    VISIONSTREAM_MODEL_WEIGHTS=${MODEL_WEIGHTS}
WORKDIR /home/visionstream
USER 10001:10001
EXPOSE 6066
ENTRYPOINT ["faust", "-A", "visionstream", "worker"]
CMD ["-l", "info"]
