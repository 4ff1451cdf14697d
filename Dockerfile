# leadflow worker image. Build: docker build -t leadflow:local .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . /src
RUN pip install . \
    && rm -rf /src \
    && groupadd --system --gid 10001 leadflow \
    && useradd --system --uid 10001 --gid leadflow --home-dir /home/leadflow --create-home leadflow \
    && mkdir -p /data \
    && chown leadflow:leadflow /data

# /data holds the RocksDB tables; a named volume mounted here inherits this ownership.
ENV LEADFLOW_DATA_DIR=/data \
    LEADFLOW_WEB_PORT=6066
WORKDIR /data
VOLUME ["/data"]

# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 6066

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LEADFLOW_WEB_PORT', '6066'), timeout=3)"]

ENTRYPOINT ["leadflow"]
CMD ["worker"]
