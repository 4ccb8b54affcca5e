# The onlinenorm service: `uvicorn service.app:app` on port 8000; docker-compose.yml runs
# several of these replicas behind nginx, beside a redis:7.
# CPU PyTorch by default; for a CUDA build pass --build-arg TORCH_INDEX_URL=https://pypi.org/simple
# (docker-compose.gpu.yml does).
FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ONLINENORM_HOST=0.0.0.0 \
    ONLINENORM_PORT=8000 \
    ONLINENORM_DATA_DIR=/data

WORKDIR /app

# Torch first, in a layer of its own: the largest download, and it changes least often.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY clients ./clients
RUN pip install . \
    && useradd --create-home --uid 10001 onlinenorm \
    && mkdir -p /data \
    && chown onlinenorm /data

USER onlinenorm
EXPOSE 8000
VOLUME ["/data"]

# One replica per container (scale with `docker compose up --scale api=N`, or pass
# `--workers N`). exec, so uvicorn gets SIGTERM and hands every model it owns over
# (a last snapshot, the lease released) before it exits.
CMD ["sh", "-c", "exec uvicorn service.app:app --host \"$ONLINENORM_HOST\" --port \"$ONLINENORM_PORT\" --timeout-graceful-shutdown 10"]
