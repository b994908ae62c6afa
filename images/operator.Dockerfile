# syntax=docker/dockerfile:1
# The VoiceLane operator: `voicelane operator`, as a non-root user on a slim Python base.
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/voicelane/voicelane-operator:0.1.0 .

# --- builder: the voicelane wheel and its dependencies' wheels ---
# requirements.txt names the built voicelane wheel file, so the runtime stage installs exactly it.
FROM python:3.11-slim-bookworm AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY voicelane ./voicelane
COPY operator ./operator
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && printf '%s\n' /wheels/voicelane-*.whl > /wheels/requirements.txt

# --- runtime: the wheels installed, nothing else ---
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted for the install only, so they do not stay in a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --requirement /wheels/requirements.txt \
    && groupadd --system --gid 65532 voicelane \
    && useradd --system --no-log-init --uid 65532 --gid 65532 --home-dir /nonexistent --shell /usr/sbin/nologin voicelane
USER 65532:65532
# 8080: /metrics, /healthz, /readyz. 9443: the sidecar-injection webhook, when enabled.
EXPOSE 8080 9443
ENTRYPOINT ["voicelane", "operator"]
