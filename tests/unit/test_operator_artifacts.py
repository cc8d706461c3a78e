"""The operator's pre-rollout artifact check: verdicts and their caching."""

from __future__ import annotations

import hashlib

from mlops.operator.artifacts import ArtifactVerifier, verify_artifact


def test_verdicts_for_file_artifacts(tmp_path):
    path = tmp_path / "m.skops"
    path.write_bytes(b"x" * 1000)
    good = hashlib.sha256(b"x" * 1000).hexdigest()
    assert verify_artifact(path.as_uri(), good, max_bytes=10_000).ok is True
    bad = verify_artifact(path.as_uri(), "e" * 64, max_bytes=10_000)
    assert bad.ok is False and "sha256 mismatch" in bad.reason and good in bad.reason
    missing = verify_artifact((tmp_path / "nope").as_uri(), good, max_bytes=10_000)
    assert missing.ok is False and "no such file" in missing.reason
    big = verify_artifact(path.as_uri(), good, max_bytes=10)
    assert big.ok is None and "larger than" in big.reason
    assert verify_artifact("s3://bucket/m.skops", good, max_bytes=10).ok is None


def test_unreachable_host_is_no_verdict():
    # a port nothing listens on: connection refused is a transport failure, left to the init container
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    verdict = verify_artifact(f"http://127.0.0.1:{port}/m.skops", "a" * 64, max_bytes=10, timeout=2)
    assert verdict.ok is None and "not reachable" in verdict.reason


def test_good_verdicts_are_cached_bad_ones_retried(tmp_path):
    now = [0.0]
    verifier = ArtifactVerifier(max_bytes=10_000, retry_seconds=30, clock=lambda: now[0])
    path = tmp_path / "m.skops"
    path.write_bytes(b"v1")
    sha = hashlib.sha256(b"v2").hexdigest()
    assert verifier.check(path.as_uri(), sha).ok is False
    path.write_bytes(b"v2")  # fixed on disk
    assert verifier.check(path.as_uri(), sha).ok is False  # still cached
    assert verifier.cached(path.as_uri(), sha).ok is False
    now[0] = 31
    assert verifier.check(path.as_uri(), sha).ok is True
    path.write_bytes(b"tampered later")
    assert verifier.check(path.as_uri(), sha).ok is True  # a verified pin is not re-fetched
    assert verifier.cached("file:///other", sha).ok is None
    assert ArtifactVerifier(enabled=False).check(path.as_uri(), sha).ok is None
