# syntax=docker/dockerfile:1
# One image for every process: `docker run IMAGE serve|relay|project|work|migrate`.
#
# Stage 1 installs the dependencies into a virtualenv (wheels only; the layer changes only when
# pyproject.toml does). Stage 2 is the slim runtime: the virtualenv, the source tree (alembic
# finds migrations/ beside the packages), a non-root user, no compilers, no pip cache.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
# The runtime dependencies exactly as pyproject.toml lists them (not the dev extra).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="taskstream" \
      org.opencontainers.image.description="An event-sourced CQRS backend for users, projects and asynchronous tasks" \
      org.opencontainers.image.source="https://github.com/taskstream/taskstream"
RUN groupadd --system --gid 10001 taskstream \
 && useradd --system --uid 10001 --gid taskstream --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin taskstream \
 && install -d -o taskstream -g taskstream -m 0750 /var/lib/taskstream /var/lib/taskstream/blobs
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The source packages, migrations/ and the health check (.dockerignore is an allow-list).
COPY . /app/
# Bytecode compiled at build time: the root filesystem is read-only at run time.
RUN python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000 \
    BLOB_DIR=/var/lib/taskstream/blobs
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py"]
ENTRYPOINT ["python", "-m", "taskstream.cli"]
CMD ["serve"]
