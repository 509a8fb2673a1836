# check=error=true
#
# buildfan's container image: the buildfan CLI plus the docker CLI and the buildx plugin, which is all that
# `docker buildx --driver kubernetes` needs (no Docker daemon). Two targets:
#   runtime  the published image (GitLab `image:`, plain `docker run`); runs as the non-root user buildfan.
#            Build it with `docker build --target runtime -t <registry>/buildfan:<version> .`
#   action   the last stage, so it is what GitHub builds for `action.yml` (`image: Dockerfile`, no target).
#            GitHub requires container actions to run as root: as any other user they cannot write to
#            $GITHUB_WORKSPACE, $GITHUB_OUTPUT or $GITHUB_STEP_SUMMARY, which the runner owns.
#
# No `# syntax=` line on purpose: it makes BuildKit pull docker/dockerfile from Docker Hub, which offline
# builders (the testbed, air-gapped clusters) cannot. The frontend built into BuildKit handles everything used
# here (heredocs, COPY --chmod/--link, RUN --mount); `# check=error=true` turns any build check into an error.
#
# Every base image is a build arg, so an offline build can point them at a local registry, e.g.
#   docker buildx build --build-arg PYTHON_IMAGE=127.0.0.1:5000/python:3.11-slim-bookworm ...

# PYTHON_IMAGE is the base of the builder and final stages (Debian, so with sh, groupadd and useradd).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# DOCKER_CLI_IMAGE provides the static docker CLI at /usr/local/bin/docker.
ARG DOCKER_CLI_IMAGE=docker:28.2.2-cli
# BUILDX_IMAGE provides the static buildx plugin at /buildx.
ARG BUILDX_IMAGE=docker/buildx-bin:0.36.1

# docker-cli and buildx are stage aliases: COPY --from cannot take a build arg.
FROM ${DOCKER_CLI_IMAGE} AS docker-cli
FROM ${BUILDX_IMAGE} AS buildx

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/buildfan
WORKDIR /src
COPY pyproject.toml README.md ./
COPY buildfan/ buildfan/
# A regular (not editable) install: the venv alone carries buildfan and its dependencies into the final stage.
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret: `--secret id=pip-ca,src=ca.crt`.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca,required=false \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/buildfan/bin/pip wheel --wheel-dir /tmp/wheels . \
    && /opt/buildfan/bin/pip install --no-index --find-links /tmp/wheels buildfan \
    && /opt/buildfan/bin/buildfan --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG BUILDFAN_VERSION=0.1.0
LABEL org.opencontainers.image.title="buildfan" \
      org.opencontainers.image.description="Fan a matrix of Docker image builds out over Kubernetes with docker buildx (kubernetes driver)" \
      org.opencontainers.image.version="${BUILDFAN_VERSION}" \
      org.opencontainers.image.source="https://github.com/buildfan/buildfan" \
      org.opencontainers.image.licenses="Apache-2.0"

# The same base as the builder stage, so the venv's interpreter symlinks stay valid.
COPY --link --from=builder /opt/buildfan /opt/buildfan
# Static binaries. /usr/libexec/docker/cli-plugins is one of the docker CLI's system plugin directories,
# searched whatever DOCKER_CONFIG points at.
COPY --link --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --link --from=buildx /buildx /usr/libexec/docker/cli-plugins/docker-buildx

# runs.post-entrypoint in action.yml names an executable and takes no arguments of its own, hence this
# wrapper. The runner passes runs.args (`action main`) to every stage, the post one too: they are dropped.
COPY --chmod=0755 <<'EOF' /usr/local/bin/buildfan-action-post
#!/bin/sh
# GitHub Actions post step of the buildfan container action: tear down what the main step left behind.
# Its arguments are the main step's runs.args, which the runner repeats here: ignore them.
exec buildfan action post
EOF

RUN groupadd --system --gid 10001 buildfan \
    && useradd --system --uid 10001 --gid buildfan --home-dir /home/buildfan --create-home \
        --shell /bin/sh buildfan \
    && install -d -o buildfan -g buildfan -m 0700 /home/buildfan/.docker \
    && docker --version && docker buildx version

ENV PATH="/opt/buildfan/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    HOME=/home/buildfan \
    DOCKER_CONFIG=/home/buildfan/.docker
USER buildfan:buildfan
WORKDIR /home/buildfan
ENTRYPOINT ["buildfan"]
CMD ["--help"]

FROM runtime AS action
# See the header: GitHub runs container actions in $GITHUB_WORKSPACE with the runner's files, as root only.
USER root
