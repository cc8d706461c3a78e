"""Where the prediction-id signing key comes from, for the model server and the router.

Why it exists: feedback only works when the process that verifies a prediction id (the router, any
replica of the version that served it) has the key the id was signed with. A random key per process
made routed feedback fail in a cluster and with ``mlops serve --workers N``. So:

* the key comes from a mounted file (``MLOPS_PREDICTION_ID_KEY_FILE``; in a cluster the
  ``<deployment>-signing-key`` Secret the operator creates) or from ``MLOPS_PREDICTION_ID_KEY``;
* keys shorter than 32 bytes are refused (an HMAC key that short can be guessed offline);
* a rotation keeps accepting ids signed with the previous key (``MLOPS_PREDICTION_ID_PREVIOUS_KEY_FILE``
  or ``MLOPS_PREDICTION_ID_PREVIOUS_KEY``) while new ids are signed with the current one;
* a multi-process setup (the router, uvicorn worker processes) without a key is a start-up error;
  only a single standalone server may fall back to a random per-process key (with a warning).

A ``SigningKeyError`` message is one line, meant to be printed as the process's only output.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

KEY_ENV = "MLOPS_PREDICTION_ID_KEY"
KEY_FILE_ENV = "MLOPS_PREDICTION_ID_KEY_FILE"
PREVIOUS_KEY_ENV = "MLOPS_PREDICTION_ID_PREVIOUS_KEY"
PREVIOUS_KEY_FILE_ENV = "MLOPS_PREDICTION_ID_PREVIOUS_KEY_FILE"
MIN_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096


class SigningKeyError(ValueError):
    """The signing key is missing where one is required, unreadable, or too short."""


@dataclass(frozen=True)
class SigningKeys:
    """The key new ids are signed with, and the previous keys still accepted when verifying."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    source: str = "configured"

    @property
    def verify_keys(self) -> tuple[bytes, ...]:
        return (self.current, *self.previous)


def new_key_text() -> str:
    """A fresh random key as text (64 URL-safe characters, 384 bits), for files, Secrets and env."""
    return secrets.token_urlsafe(48)


def _checked(raw: bytes, where: str) -> bytes:
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(f"prediction-id key from {where} is {len(key)} bytes; at least {MIN_KEY_BYTES} "
                              "are required (generate one with: python -c 'import secrets; "
                              "print(secrets.token_urlsafe(48))')")
    return key


def _read_file(path: str, env: str, *, optional: bool) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        if optional:
            return None
        raise SigningKeyError(f"{env}={path}: no such file") from None
    except OSError as exc:
        raise SigningKeyError(f"{env}={path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{env}={path}: over {MAX_KEY_FILE_BYTES} bytes; not a key file")
    return _checked(raw, f"{env}={path}")


def configured_keys(environ: Mapping[str, str] | None = None) -> SigningKeys | None:
    """The keys the environment configures, or None when no current key is configured.

    The file wins over the variable when both are set. The previous key is optional; a previous-key
    file that does not exist (yet) is ignored, because a mounted Secret only has it during a rotation.
    """
    env = os.environ if environ is None else environ
    current: bytes | None = None
    if env.get(KEY_FILE_ENV):
        current = _read_file(env[KEY_FILE_ENV], KEY_FILE_ENV, optional=False)
    elif env.get(KEY_ENV):
        current = _checked(env[KEY_ENV].encode("utf-8"), KEY_ENV)
    previous: list[bytes] = []
    if env.get(PREVIOUS_KEY_FILE_ENV):
        old = _read_file(env[PREVIOUS_KEY_FILE_ENV], PREVIOUS_KEY_FILE_ENV, optional=True)
        if old is not None:
            previous.append(old)
    if env.get(PREVIOUS_KEY_ENV):
        previous.append(_checked(env[PREVIOUS_KEY_ENV].encode("utf-8"), PREVIOUS_KEY_ENV))
    if current is None:
        if previous:
            raise SigningKeyError(f"a previous prediction-id key is set but no current one ({KEY_FILE_ENV} or "
                                  f"{KEY_ENV})")
        return None
    previous = [k for k in dict.fromkeys(previous) if k != current]
    return SigningKeys(current, tuple(previous))


_lock = threading.Lock()
_process_keys: SigningKeys | None = None


def signing_keys(environ: Mapping[str, str] | None = None, *, required_by: str | None = None) -> SigningKeys:
    """The configured keys; otherwise, unless ``required_by`` names a multi-process setup that needs
    a shared key (then SigningKeyError), one random key for this process, with a warning."""
    keys = configured_keys(environ)
    if keys is not None:
        return keys
    if required_by:
        raise SigningKeyError(f"{required_by} needs a shared prediction-id key: set {KEY_FILE_ENV} (a mounted "
                              f"file) or {KEY_ENV} (at least {MIN_KEY_BYTES} bytes) to the key the model "
                              "servers use")
    global _process_keys
    with _lock:
        if _process_keys is None:
            logger.warning("%s/%s not set: using a random per-process key; prediction ids signed here cannot "
                           "be verified by other processes or the router", KEY_FILE_ENV, KEY_ENV)
            _process_keys = SigningKeys(secrets.token_bytes(32), source="random")
        return _process_keys
