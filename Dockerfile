# The kubefit operator image: `kubefit run` as a non-root user.
#   docker build -t ghcr.io/kubefit/kubefit:0.1.0 .
FROM python:3.11-slim

# No .pyc files on a read-only root filesystem; logs straight to the container runtime.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the operator's package build needs (see .dockerignore): operator/kubefit. The sandbox
# (sandbox/, a separate distribution), tests, docs and the chart stay out.
COPY pyproject.toml README.md ./
COPY operator/kubefit ./operator/kubefit
RUN pip install . && rm -rf /src

# A fixed numeric UID/GID so that the chart's runAsUser/runAsNonRoot can be checked by the kubelet.
RUN groupadd --system --gid 10001 kubefit \
    && useradd --system --uid 10001 --gid kubefit --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kubefit
USER 10001:10001
WORKDIR /

ENTRYPOINT ["kubefit", "run"]
