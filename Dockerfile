# mcp-proxy in a container: one process, non-root, health-checked on the admin listener.
#
#   docker build -t mcp-proxy .    (or --build-arg BUILDER=python:3.12 --build-arg BASE=python:3.12-slim)
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/my-config.yaml:/etc/mcp-proxy/mcp-proxy.yaml:ro" mcp-proxy
#
# Mount your own config at /etc/mcp-proxy/mcp-proxy.yaml (a ConfigMap, a volume). The config
# copied in here is the shipped config/mcp-proxy.yaml: it listens on 127.0.0.1, which nothing
# outside the container can reach, so it only proves that the image starts. Yours should say
# `listen: 0.0.0.0:8080` and `admin: 0.0.0.0:9901` (publish the admin port only to trusted
# networks: it serves /metrics and the admin API). Files a config names relatively, like
# jwks_file, are looked up in the config's folder. SIGTERM drains in-flight requests for up to
# `drain_timeout` (20 s by default): give `docker stop -t 30` or a longer grace period.
#
# Linted with hadolint (in CI); there is no Docker engine on the development machines, so the
# image itself is not built there.

# Two stages: the full Python image has the C compiler that mypyc needs to compile the request
# path (setup.py, README "Speed"); the slim image that runs it needs none. Keep both on the same
# Python minor version: the compiled modules are built for one.
ARG BUILDER=python:3.11
ARG BASE=python:3.11-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY mcp_proxy ./mcp_proxy
RUN MCP_PROXY_COMPILE=1 pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 mcp-proxy \
    && useradd --system --uid 10001 --gid mcp-proxy --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin mcp-proxy

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && mcp-proxy --version

COPY config/mcp-proxy.yaml config/jwks.json /etc/mcp-proxy/
WORKDIR /etc/mcp-proxy

USER 10001:10001
EXPOSE 8080 9901

# python:*-slim has no curl: ask /healthz with the interpreter that is there anyway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]

ENTRYPOINT ["mcp-proxy"]
CMD ["run", "-c", "/etc/mcp-proxy/mcp-proxy.yaml"]
