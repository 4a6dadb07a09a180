# PillSnap REST API image (issue 11 §4). Not built or run in the development workplace (no container registry is
# reachable there for the base image): build and try it on a machine with Docker.
#
#   docker build -t pillsnap-api .
#   docker run --rm -p 8000:8000 -v /path/to/run:/run:ro \
#       -e PILLSNAP_API_KEYS=change-me -e PILLSNAP_ADMIN_KEYS=change-me-too pillsnap-api
#
# The run folder (pillsnap train output: classifier/best.pt, detector/weights/best.pt, class_map.sha256) is mounted at
# /run. The server listens on 0.0.0.0 inside the container, so it refuses to start unless PILLSNAP_API_KEYS or
# PILLSNAP_ADMIN_KEYS is set.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ultralytics

# OpenCV (pulled in by ultralytics) needs these shared libraries even headless.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.py settings.ini README.md ./
COPY pillsnap ./pillsnap
# For a smaller CPU-only image, install torch/torchvision from PyTorch's CPU wheel index in a step before this one.
RUN pip install ".[serve]"

RUN useradd --create-home --uid 10001 pillsnap
USER pillsnap

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
CMD ["pillsnap", "serve", "--run", "/run", "--host", "0.0.0.0", "--port", "8000"]
