# One image, several entry points: `mlops operator`, `mlops serve`, `mlops sidecar`, `mlops route`,
# `mlops train`. The operator's pod templates run it as a non-root user with a read-only root
# filesystem (restricted Pod Security profile), so nothing is written outside mounted volumes:
# state goes to $MLOPS_HOME (/var/lib/mlops, mount a tmpfs or emptyDir there).
#
# The base is a build arg: python:3.11-slim by default; `make image` (hack/build-image.sh) passes a
# base made from Debian packages on machines without a registry. Any base with python3 (3.11+),
# its venv module and useradd works.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/mlops PATH=/opt/mlops/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/mlops
WORKDIR /src
# Dependencies first, from pyproject.toml alone (placeholder README and package): this layer is reused
# until the dependencies change. The placeholders and setuptools' build/ folder are removed again: a
# stale build/lib copy of the placeholder would shadow the real mlops/__init__.py copied next.
COPY pyproject.toml ./
RUN mkdir mlops && touch mlops/__init__.py README.md \
    && pip install --no-cache-dir . \
    && pip uninstall --yes mlops-operator \
    && rm -rf mlops build ./*.egg-info README.md
COPY README.md ./
COPY mlops ./mlops
RUN pip install --no-cache-dir --no-deps . \
    && mlops --help >/dev/null
# The quick-start demo's two model versions, trained at build time: `mlops serve --demo` serves these
# without training, and examples/00-quickstart deploys them through the init container (file://).
RUN python -c "import json; from mlops.serving import demo; a = demo.build_demo('/opt/mlops/demo-models'); \
open('/opt/mlops/demo-models/quickstart.yaml', 'w').write(json.dumps(demo.quickstart_manifest(a), indent=2))"

FROM ${BASE_IMAGE}
COPY --from=build /opt/mlops /opt/mlops
RUN useradd --uid 65532 --no-create-home --home-dir /var/lib/mlops --shell /usr/sbin/nologin mlops
# USER/LOGNAME: pods may run the image under any uid (the operator's manifests use 10001), which has
# no passwd entry; getpass.getuser() (kopf's peering identity) reads these before asking passwd.
ENV PATH=/opt/mlops/bin:$PATH \
    USER=mlops \
    LOGNAME=mlops \
    MLOPS_HOME=/var/lib/mlops \
    MLOPS_DEMO_MODELS=/opt/mlops/demo-models \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /var/lib/mlops
ENTRYPOINT ["mlops"]
CMD ["--help"]
