"""The operator's own artifact check, done before a version is rolled out.

In a real cluster the pod's init container verifies the sha256 too, but a failing init container only
shows up as a pod stuck in Init, and the rollout has by then replaced the spec of the running version.
Checking reachable artifacts here first (file:// paths visible to the operator, http(s):// with a size
cap) lets the operator keep the previous artifact serving and say why in status and an Event.
Schemes it cannot reach (s3://, gs://) are left to the init container: the verdict is "unverified".
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from mlops.operator.resources.model_deployment import ArtifactCheck

CHUNK = 1 << 20


def verify_artifact(uri: str, sha256: str, *, max_bytes: int, timeout: float = 10.0) -> ArtifactCheck:
    """Stream the artifact and compare its sha256; never raises."""
    parsed = urllib.parse.urlparse(uri)
    digest = hashlib.sha256()
    size = 0
    try:
        if parsed.scheme == "file":
            path = urllib.parse.unquote(parsed.path)
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        return ArtifactCheck(None, f"{uri} is larger than {max_bytes} bytes: left to the init container")
                    digest.update(chunk)
        elif parsed.scheme in ("http", "https"):
            import httpx

            with httpx.stream("GET", uri, timeout=timeout, follow_redirects=True) as resp:
                if resp.status_code != 200:
                    return ArtifactCheck(False, f"artifact {uri} is unreachable: HTTP {resp.status_code}")
                for chunk in resp.iter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        return ArtifactCheck(None, f"{uri} is larger than {max_bytes} bytes: left to the init container")
                    digest.update(chunk)
        else:
            return ArtifactCheck(None, f"{parsed.scheme}:// artifacts are verified by the pod's init container")
    except FileNotFoundError:
        return ArtifactCheck(False, f"artifact {uri} is unreachable: no such file")
    except OSError as exc:
        return ArtifactCheck(False, f"artifact {uri} is unreadable: {exc.strerror or exc}")
    except Exception as exc:
        import httpx

        # The operator may not reach a host its pods can (egress rules): a transport failure is no
        # verdict; the init container still verifies, and the check is retried later.
        if isinstance(exc, httpx.TransportError):
            return ArtifactCheck(None, f"artifact {uri} not reachable from the operator ({type(exc).__name__}): "
                                 "left to the init container")
        if isinstance(exc, httpx.HTTPError):
            return ArtifactCheck(False, f"artifact {uri} is unreachable: {type(exc).__name__}: {exc}")
        raise
    got = digest.hexdigest()
    if got != sha256.lower():
        return ArtifactCheck(False, f"sha256 mismatch for {uri}: got {got}, spec pins {sha256.lower()}")
    return ArtifactCheck(True, "sha256 verified")


@dataclass
class ArtifactVerifier:
    """Caches verdicts: good ones for good (content is pinned), others for ``retry_seconds``."""

    max_bytes: int = 256 << 20
    retry_seconds: float = 30.0
    enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[str, str], tuple[ArtifactCheck, float]] = field(default_factory=dict)

    def cached(self, uri: str, sha256: str) -> ArtifactCheck:
        """The last verdict without fetching anything (unknown -> unverified)."""
        if not self.enabled:
            return ArtifactCheck(None, "verification disabled")
        hit = self._cache.get((uri, sha256.lower()))
        return hit[0] if hit else ArtifactCheck(None, "not checked yet")

    def check(self, uri: str, sha256: str) -> ArtifactCheck:
        if not self.enabled:
            return ArtifactCheck(None, "verification disabled")
        key = (uri, sha256.lower())
        hit = self._cache.get(key)
        now = self.clock()
        if hit and (hit[0].ok is True or now - hit[1] < self.retry_seconds):
            return hit[0]
        verdict = verify_artifact(uri, sha256, max_bytes=self.max_bytes)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (verdict, now)
        return verdict
