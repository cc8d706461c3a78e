# One image, several entry points: `mlops operator`, `mlops serve`, `mlops sidecar`, `mlops route`,
# `mlops train`. The operator's pod templates run it as a non-root user with a read-only root
# filesystem (restricted Pod Security profile), so nothing is written outside mounted volumes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mlops ./mlops
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin mlops
USER 65532:65532
ENV MLOPS_HOME=/var/lib/mlops PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["mlops"]
CMD ["--help"]
