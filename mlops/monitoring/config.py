"""Read the guide's central YAML configuration file into the validated model of
:mod:`mlops.core.config`.

Why it exists: the guide loads ``config/<env>_config.yaml`` with ``yaml.safe_load`` and passes raw
dicts on; this is the same read with validation, so a typo or a wrong type fails at start-up with
the file name and the key path instead of misbehaving later.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from mlops.core.config import ConfigError, MLOpsConfig, validate_config

__all__ = ["ConfigError", "MLOpsConfig", "load_config", "load_config_text"]


def load_config_text(text: str, source: str = "<string>") -> MLOpsConfig:
    """Validate YAML text; raises :class:`ConfigError` (YAML syntax errors included)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"invalid YAML{where}: {problem}"], source) from None
    return validate_config(data, source)


def load_config(path: str | os.PathLike[str]) -> MLOpsConfig:
    """Read and validate a configuration file; raises :class:`ConfigError` naming the file and
    every bad key path (``production.monitoring.alert_config.critical_latency_ms: ...``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, not a YAML file"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["not a UTF-8 text file"], str(path)) from None
    except OSError as exc:
        raise ConfigError([exc.strerror or str(exc)], str(path)) from None
    return load_config_text(text, str(path))
