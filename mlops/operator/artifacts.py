"""The operator's own artifact check, done before a version is rolled out.

In a real cluster the pod's init container verifies the sha256 too, but a failing init container only
shows up as a pod stuck in Init, and the rollout has by then replaced the spec of the running version.
Checking reachable artifacts here first (file:// paths visible to the operator, http(s):// with a size
cap) lets the operator keep the previous artifact serving and say why in status and an Event.
Schemes it cannot reach (s3://, gs://) are left to the init container: the verdict is "unverified".

What the operator fetches is bounded by an ``ArtifactPolicy`` the administrator sets (flags
``--artifact-allowed-schemes``, ``--artifact-allowed-hosts``): the operator runs with a ServiceAccount
and sits inside the cluster network, so a URI in a ModelDeployment must not become a way to make it read
its own files (``file:///etc/hostname`` once put the host file's digest into status) or reach
loopback / link-local services (``http://127.0.0.1:<port>/metrics``, cloud metadata at 169.254.169.254).

- a scheme or host outside the policy is *not fetched*: the verdict is "not verified by the operator"
  and says why; the pod's init container still verifies the digest before anything is loaded;
- a host that resolves to a loopback, link-local, unspecified or multicast address is *refused*
  (verdict False: not rolled out), since no pod has a legitimate artifact there either;
- redirects are followed by hand, each target checked against the same policy.

Residual risk: the host is resolved for the check and again by the HTTP client (DNS rebinding between
the two is not prevented); restrict ``--artifact-allowed-hosts`` where that matters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mlops.operator.resources.model_deployment import ArtifactCheck

CHUNK = 1 << 20


DEFAULT_SCHEMES = ("https", "s3", "gs")
MAX_REDIRECTS = 5


def _resolve(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError):
        return []


@dataclass(frozen=True)
class ArtifactPolicy:
    """Which artifact URIs the operator itself may fetch (and which are refused outright)."""

    allowed_schemes: frozenset[str] = frozenset(DEFAULT_SCHEMES)
    allowed_hosts: frozenset[str] | None = None  # None: any host that is not loopback/link-local
    allow_loopback: bool = False  # tests only: artifact servers on 127.0.0.1
    resolve: Callable[[str], list[str]] = _resolve

    @classmethod
    def from_flags(cls, schemes: Iterable[str] | None, hosts: Iterable[str] | None) -> ArtifactPolicy:
        schemes = [s.strip().lower() for s in (schemes or DEFAULT_SCHEMES) if s.strip()]
        host_list = [h.strip().lower() for h in hosts or () if h.strip()]
        return cls(allowed_schemes=frozenset(schemes), allowed_hosts=frozenset(host_list) if host_list else None)

    def refusal(self, uri: str) -> tuple[bool, str] | None:
        """None if the operator may fetch ``uri``; else (refused outright?, why)."""
        parsed = urllib.parse.urlparse(uri)
        scheme = parsed.scheme.lower()
        allowed = ", ".join(sorted(self.allowed_schemes)) or "none"
        if scheme == "file":
            if scheme in self.allowed_schemes:
                return None
            return False, f"file:// is not read by the operator (allowed schemes: {allowed})"
        host = (parsed.hostname or "").lower()
        if not host:
            return True, f"refused: artifact URI {uri} has no host"
        try:
            addresses = [host] if ipaddress.ip_address(host) else []
        except ValueError:
            addresses = self.resolve(host)
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None) or ip
            bad = ("loopback" if mapped.is_loopback else "link-local" if mapped.is_link_local
                   else "unspecified" if mapped.is_unspecified else "multicast" if mapped.is_multicast else None)
            if bad and not (bad == "loopback" and self.allow_loopback):
                return True, (f"refused: artifact host {host} resolves to {bad} address {address}; the operator "
                              "never fetches from loopback or link-local addresses")
        if scheme not in self.allowed_schemes:
            return False, f"{scheme}:// is not fetched by the operator (allowed schemes: {allowed})"
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return False, f"host {host} is not in the operator's allowed artifact hosts"
        return None


def verify_artifact(uri: str, sha256: str, *, max_bytes: int, timeout: float = 10.0,
                    policy: ArtifactPolicy | None = None) -> ArtifactCheck:
    """Stream the artifact and compare its sha256; never raises. Nothing outside ``policy`` is fetched."""
    policy = policy or ArtifactPolicy()
    if urllib.parse.urlparse(uri).scheme.lower() in ("s3", "gs", "models", "runs"):
        return ArtifactCheck(None, f"{urllib.parse.urlparse(uri).scheme}:// artifacts are verified by the pod's "
                             "init container")
    refused = policy.refusal(uri)
    if refused is not None:
        outright, why = refused
        return ArtifactCheck(False if outright else None, why if outright else f"{why}; the init container verifies it")
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

            url = uri
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    with client.stream("GET", url) as resp:
                        if resp.is_redirect:
                            target = urllib.parse.urljoin(url, resp.headers.get("location", ""))
                            refused = policy.refusal(target)
                            if refused is not None:
                                return ArtifactCheck(False, f"artifact {uri} redirects to {target}: {refused[1]}")
                            url = target
                            continue
                        if resp.status_code != 200:
                            return ArtifactCheck(False, f"artifact {uri} is unreachable: HTTP {resp.status_code}")
                        for chunk in resp.iter_bytes(CHUNK):
                            size += len(chunk)
                            if size > max_bytes:
                                return ArtifactCheck(None, f"{uri} is larger than {max_bytes} bytes: left to the init container")
                            digest.update(chunk)
                        break
                else:
                    return ArtifactCheck(False, f"artifact {uri}: more than {MAX_REDIRECTS} redirects")
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
    policy: ArtifactPolicy = field(default_factory=ArtifactPolicy)
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
        verdict = verify_artifact(uri, sha256, max_bytes=self.max_bytes, policy=self.policy)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (verdict, now)
        return verdict
