"""The operator's pre-rollout artifact check: verdicts and their caching."""

from __future__ import annotations

import hashlib

from mlops.operator.artifacts import ArtifactPolicy, ArtifactVerifier, verify_artifact

OPEN = ArtifactPolicy(allowed_schemes=frozenset({"file", "http", "https"}), allow_loopback=True)


def test_verdicts_for_file_artifacts(tmp_path):
    path = tmp_path / "m.skops"
    path.write_bytes(b"x" * 1000)
    good = hashlib.sha256(b"x" * 1000).hexdigest()
    assert verify_artifact(path.as_uri(), good, max_bytes=10_000, policy=OPEN).ok is True
    bad = verify_artifact(path.as_uri(), "e" * 64, max_bytes=10_000, policy=OPEN)
    assert bad.ok is False and "sha256 mismatch" in bad.reason and good in bad.reason
    missing = verify_artifact((tmp_path / "nope").as_uri(), good, max_bytes=10_000, policy=OPEN)
    assert missing.ok is False and "no such file" in missing.reason
    big = verify_artifact(path.as_uri(), good, max_bytes=10, policy=OPEN)
    assert big.ok is None and "larger than" in big.reason
    assert verify_artifact("s3://bucket/m.skops", good, max_bytes=10).ok is None


def test_unreachable_host_is_no_verdict():
    # a port nothing listens on: connection refused is a transport failure, left to the init container
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    verdict = verify_artifact(f"http://127.0.0.1:{port}/m.skops", "a" * 64, max_bytes=10, timeout=2, policy=OPEN)
    assert verdict.ok is None and "not reachable" in verdict.reason


def test_good_verdicts_are_cached_bad_ones_retried(tmp_path):
    now = [0.0]
    verifier = ArtifactVerifier(max_bytes=10_000, retry_seconds=30, clock=lambda: now[0], policy=OPEN)
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


def test_policy_refuses_loopback_link_local_and_does_not_read_own_files(tmp_path):
    path = tmp_path / "hostname"
    path.write_bytes(b"secret host file")
    strict = ArtifactPolicy()
    for uri in ("http://127.0.0.1:9/metrics", "https://[::1]/m", "https://169.254.169.254/latest/meta-data",
                "https://localhost/m.skops", "https://0.0.0.0/m", "http://[::ffff:127.0.0.1]/m"):
        verdict = verify_artifact(uri, "a" * 64, max_bytes=10, policy=strict)
        assert verdict.ok is False and "refused" in verdict.reason, (uri, verdict)
    # file:// is not an allowed scheme by default: nothing is read, no digest reported
    verdict = verify_artifact(path.as_uri(), "a" * 64, max_bytes=10_000, policy=strict)
    assert verdict.ok is None and "not read by the operator" in verdict.reason
    assert hashlib.sha256(b"secret host file").hexdigest() not in verdict.reason
    # http:// is not allowed by default either
    assert "not fetched" in verify_artifact("http://models.example/m", "a" * 64, max_bytes=10, policy=strict).reason
    hosts = ArtifactPolicy.from_flags(["https"], ["models.example"])
    assert "not in the operator's allowed" in hosts.refusal("https://other.example/m")[1]
    assert ArtifactPolicy(resolve=lambda h: ["10.1.2.3"]).refusal("https://minio.internal/m") is None


def test_redirect_to_a_refused_host_is_not_followed():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
            else:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"v1")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        verdict = verify_artifact(base + "/redirect", "a" * 64, max_bytes=100, policy=OPEN)
        assert verdict.ok is False and "redirects to http://169.254.169.254" in verdict.reason
        good = verify_artifact(base + "/m", hashlib.sha256(b"v1").hexdigest(), max_bytes=100, policy=OPEN)
        assert good.ok is True
        assert hits == ["/redirect", "/m"]
    finally:
        server.shutdown()
