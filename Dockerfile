# One image for every Switchboard service; the command picks which one runs:
#   docker run switchboard serve ingest|enrich|router|notify
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/switchboard
COPY requirements.lock pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
# Only the runtime dependencies, at the versions the lock pins.
RUN /opt/switchboard/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/switchboard/bin/pip install --no-cache-dir -c requirements.lock .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /opt/switchboard /opt/switchboard
ENV PATH=/opt/switchboard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SWITCHBOARD_LOG_JSON_OUTPUT=true
USER 10001
ENTRYPOINT ["switchboard"]
CMD ["--help"]
