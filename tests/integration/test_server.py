"""The model server's ASGI app with real models, a real SQLite-backed monitor and a real registry:
validation errors, versions (challenger, tampering, rollback), feedback, admin auth, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from mlops.core.prediction_id import sign_prediction_id, verify_prediction_id
from mlops.serving.model_store import ModelLoadError
from mlops.serving.production_server import create_production_server
from mlops.serving.schemas import MAX_BATCH
from mlops.serving.training import train

KEY = b"k" * 32
ROW = {"a": 1.5, "b": -0.5}


def _frame(seed: int, flip: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, 400))
    c[rng.random(400) < 0.2] = np.nan
    y = ((a - b > 0) ^ flip).astype(int)
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y})


@pytest.fixture()
def artifacts(tmp_path):
    out = {}
    for version, flip in [("v1", False), ("v2", True)]:
        meta = train(_frame(3, flip), "y", tmp_path / version, model_name="m", version=version)
        out[version] = ((tmp_path / version / "model.skops").as_uri(), meta.sha256)
    return out


@pytest.fixture()
def server(artifacts, tmp_path):
    srv = create_production_server("m", enable_ab_testing=False, admin_token="secret", prediction_key=KEY,
                                   registry=CollectorRegistry(), flush_interval=0.05, model_root=tmp_path)
    srv.load_model_version("v1", uri=artifacts["v1"][0], sha256=artifacts["v1"][1])
    yield srv
    srv.close()


@pytest.fixture()
def client(server):
    with TestClient(server.app) as c:
        yield c


def test_health_is_503_until_a_model_is_loaded(artifacts):
    srv = create_production_server("m", enable_monitoring=False, enable_ab_testing=False)
    with TestClient(srv.app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert c.get("/ready").status_code == 503
        assert c.post("/predict", json={"features": ROW}).status_code == 503
        srv.load_model_version("v1", uri=artifacts["v1"][0])
        body = c.get("/health").json()
        assert body["status"] == "healthy" and body["current_model_version"] == "v1"
        assert set(body) == {"status", "model_name", "current_model_version", "uptime_seconds", "request_count",
                             "error_count", "models_loaded", "degraded_reasons"}


def test_predict_returns_signed_id_and_is_recorded(server, client):
    r = client.post("/predict", json={"features": ROW, "user_id": "u1"})
    assert r.status_code == 200
    body = r.json()
    assert body["prediction"] == 1 and body["model_version"] == "v1" and body["user_id"] == "u1"
    assert 0.5 <= body["confidence"] <= 1 and body["timestamp"].endswith("Z")
    ref = verify_prediction_id(KEY, body["prediction_id"])
    assert (ref.version, ref.prediction) == ("v1", "1")
    server.recorder.flush()
    status = client.get("/monitoring/status", params={"hours": 24}).json()
    assert status["total_predictions"] == 1 and status["recording"]["written"] == 1


def test_batch_predictions_in_row_order_with_optional_feature_omitted(client):
    rows = [{"a": 2.0, "b": -2.0}, {"b": 2.0, "a": -2.0, "c": 0.3}]
    r = client.post("/predict/batch", json={"batch_features": rows, "user_ids": ["x", "y"]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["prediction"] for p in preds] == [1, 0] and [p["user_id"] for p in preds] == ["x", "y"]
    assert len({p["prediction_id"] for p in preds}) == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [
        (b'{"features": {"a": 1', "application/json", 400, "malformed_json", None),
        (b'{"features": {"a": 1, "b": 2}}', "text/plain", 415, "unsupported_media_type", None),
        (b'{"features": {"a": 1}}', "application/json", 422, "invalid_feature", "features.b"),
        (b'{"features": {"a": 1, "b": 2}, "colour": "red"}', "application/json", 422, "validation_error", "colour"),
        (b'{"features": {"a": "high", "b": 2}}', "application/json", 422, "invalid_feature", "features.a"),
        (b'{"features": {"a": 1, "b": 2, "zz": 3}}', "application/json", 422, "invalid_feature", "features.zz"),
        (b'{"features": [1, 2]}', "application/json", 422, "validation_error", "features"),
        (b"", "application/json", 400, "malformed_json", None),
    ],
)
def test_bad_single_requests_get_4xx_json_naming_the_problem(client, body, content_type, status, code, field):
    r = client.post("/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    assert payload["error"] == code and payload["field"] == field and payload["message"]


def test_empty_and_oversized_batches(client, server):
    empty = client.post("/predict/batch", json={"batch_features": []})
    assert empty.status_code == 422 and empty.json()["field"] == "batch_features"
    too_many = client.post("/predict/batch", json={"batch_features": [ROW] * (MAX_BATCH + 1)})
    assert too_many.status_code == 422 and too_many.json()["field"] == "batch_features"
    huge = b'{"batch_features": [' + b",".join([b'{"a": 1.0, "b": 2.0}'] * 60_000) + b"]}"
    r = client.post("/predict/batch", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    mismatch = client.post("/predict/batch", json={"batch_features": [ROW], "user_ids": ["a", "b"]})
    assert mismatch.status_code == 422 and mismatch.json()["field"] == "user_ids"


def test_challenger_tampering_and_rollback(server, client, artifacts, tmp_path):
    server.load_model_version("v2", uri=artifacts["v2"][0], sha256=artifacts["v2"][1])
    assert server.current_model_version == "v1" and sorted(server.models) == ["v1", "v2"]
    assert client.post("/predict", json={"features": ROW}).json()["model_version"] == "v1"

    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        server.load_model_version("v3", uri=artifacts["v2"][0], sha256="f" * 64, make_current=True)
    assert server.current_model_version == "v1" and "v3" not in server.models
    assert client.post("/predict", json={"features": ROW}).status_code == 200

    server.load_model_version("v2", uri=artifacts["v2"][0], make_current=True)
    assert client.post("/predict", json={"features": ROW}).json()["prediction"] == 0  # v2 is flipped
    assert server.rollback_model("previous_stable") == {"previous_version": "v2", "current_model_version": "v1"}
    assert client.post("/predict", json={"features": ROW}).json()["prediction"] == 1
    with pytest.raises(ValueError):
        server.rollback_model("previous_stable")
    with pytest.raises(ValueError):
        server.rollback_model("v9")


def test_admin_api_requires_token_and_refuses_tampered_artifact(client, server, artifacts):
    load = {"version": "v2", "uri": artifacts["v2"][0], "sha256": artifacts["v2"][1]}
    assert client.post("/admin/models", json=load).status_code == 401
    bad = client.post("/admin/models", json={**load, "sha256": "0" * 64}, headers={"authorization": "Bearer secret"})
    assert bad.status_code == 422 and "sha256 mismatch" in bad.json()["message"]
    assert "still serving v1" in bad.json()["message"]
    ok = client.post("/admin/models", json=load, headers={"authorization": "Bearer secret"})
    assert ok.status_code == 201 and ok.json()["current_model_version"] == "v1"
    promote = client.post("/admin/rollback", json={"target": "v2"}, headers={"authorization": "Bearer secret"})
    assert promote.status_code == 200 and server.current_model_version == "v2"
    back = client.post("/admin/rollback", json={}, headers={"authorization": "Bearer secret"})
    assert back.json()["current_model_version"] == "v1"
    nothing = client.post("/admin/rollback", json={}, headers={"authorization": "Bearer secret"})
    assert nothing.status_code == 409


def test_admin_disabled_without_token(artifacts):
    srv = create_production_server("m", enable_monitoring=False, enable_ab_testing=False, admin_token="")
    with TestClient(srv.app) as c:
        r = c.post("/admin/rollback", json={}, headers={"authorization": "Bearer x"})
        assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


def test_feedback_verifies_ids(client, server):
    pid = client.post("/predict", json={"features": ROW}).json()["prediction_id"]
    ok = client.post("/feedback", json={"prediction_id": pid, "true_label": 1})
    assert ok.status_code == 202 and ok.json()["accepted"] == 1
    forged = sign_prediction_id(b"other key", "v1", "1", "n")
    bad = client.post("/feedback", json={"prediction_id": forged, "true_label": 1})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_prediction_id"
    # Replays of an id already labelled: the first label wins, the rest are counted as duplicates.
    many = client.post("/feedback", json={"feedback": [{"prediction_id": pid, "true_label": 0}] * 3})
    assert many.status_code == 202 and many.json()["accepted"] == 0 and many.json()["duplicates"] == 3
    assert server.feedback_count == 1 and server.feedback_duplicates == 3


def test_metrics_exposition(client):
    client.post("/predict", json={"features": ROW})
    text = client.get("/metrics").text
    assert 'mlops_server_predictions_total{version="v1"} 1.0' in text
    assert "mlops_monitoring_records_dropped_total 0.0" in text
    assert 'mlops_server_model_loaded{current="true",version="v1"} 1.0' in text


def test_queue_full_drops_are_counted(artifacts):
    srv = create_production_server("m", enable_ab_testing=False, queue_capacity=5, flush_interval=60)
    srv.load_model_version("v1", uri=artifacts["v1"][0])
    srv.predict_batch([ROW] * 8)
    assert srv.recording_stats()["dropped"] == 3 and srv.recording_stats()["recorded"] == 5
    srv.close()
    assert srv.recording_stats()["written"] == 5


def test_predict_batch_python_api_accepts_dataframes(server):
    results = server.predict_batch(pd.DataFrame([{"a": 2.0, "b": -2.0, "c": np.nan}, {"a": -2.0, "b": 2.0, "c": 1.0}]))
    assert [r["prediction"] for r in results] == [1, 0]
    with pytest.raises(ValueError, match="missing required"):
        server.predict_batch([{"a": 1.0}])


def test_openapi_documents_request_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictRequest"}
    assert "PredictRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


BAD_BODIES = [
    (b'{"features": {"a": 1', "application/json"),
    (b'{"features": {"a": 1, "b": 2}}', "text/plain"),
    (b'{"features": {"a": 1}}', "application/json"),
    (b'{"features": {"a": 1, "b": 2}, "colour": "red"}', "application/json"),
    (b'{"features": {"a": "high", "b": 2}}', "application/json"),
    (b'{"features": {"a": true, "b": 2}}', "application/json"),
    (b'{"features": {"a": 1, "b": 2}, "user_id": ""}', "application/json"),
    (b'{"features": {"a": 1, "b": 2}, "experiment_name": "nope"}', "application/json"),
    (b"[]", "application/json"),
    (b"", "application/json"),
]


def test_fast_predict_path_answers_exactly_like_the_fastapi_route(artifacts):
    """/predict is served by a raw ASGI handler; the documented FastAPI route (fast_path=False) must
    give the very same statuses and error bodies."""
    answers = []
    for fast in (True, False):
        srv = create_production_server("m", enable_ab_testing=False, prediction_key=KEY, fast_path=fast,
                                       registry=CollectorRegistry())
        srv.load_model_version("v1", uri=artifacts["v1"][0])
        with TestClient(srv.app) as c:
            got = []
            for body, content_type in BAD_BODIES:
                r = c.post("/predict", content=body, headers={"content-type": content_type})
                got.append((r.status_code, r.headers["content-type"], r.json()))
            ok = c.post("/predict", json={"features": ROW, "user_id": "u"}).json()
            got.append({k: v for k, v in ok.items() if k not in ("prediction_id", "latency_ms", "timestamp")})
            too_big = c.post("/predict", content=b"x" * (srv.max_body_bytes + 1),
                             headers={"content-type": "application/json"})
            got.append((too_big.status_code, too_big.json()["error"]))
        srv.close()
        answers.append(got)
    assert answers[0] == answers[1]
    assert all(status >= 400 for status, _, _ in answers[0][: len(BAD_BODIES)])
    assert answers[0][-1] == (413, "body_too_large")


def test_concurrent_predictions_are_batched_and_equal_one_row_predictions(server):
    import asyncio

    import httpx

    rng = np.random.default_rng(7)
    rows = [{"a": float(a), "b": float(b)} for a, b in rng.normal(size=(200, 2))]

    async def fire() -> list[dict]:
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            responses = await asyncio.gather(*(c.post("/predict", json={"features": r}) for r in rows))
        return [r.json() for r in responses]

    got = asyncio.run(fire())
    model = server.models["v1"]
    for answer, features in zip(got, rows, strict=True):
        labels, confidence = model.predict([model.row(features)])
        assert answer["prediction"] == labels[0]
        assert answer["confidence"] == pytest.approx(confidence[0], rel=1e-12, abs=0)
        assert verify_prediction_id(KEY, answer["prediction_id"]).prediction == str(labels[0])
    assert server.batcher.stats()["max_batch_seen"] > 1
    assert server.batcher.stats()["rows"] == 200
    server.recorder.flush()
    assert server.recording_stats()["written"] == 200


def test_middleware_added_by_a_user_also_sees_predict(server):
    seen = []

    @server.app.middleware("http")
    async def spy(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    with TestClient(server.app) as c:
        assert c.post("/predict", json={"features": ROW}).status_code == 200
    assert seen == ["/predict"]


def test_admin_loads_model_files_only_under_the_model_root(client, server, artifacts, tmp_path):
    """Reproduced: /admin/models answered the sha256 of any local file it was pointed at."""
    auth = {"authorization": "Bearer secret"}
    secret_file = tmp_path.parent / "outside.txt"
    secret_file.write_text("not a model")
    for uri in (str(secret_file), secret_file.as_uri(), "/etc/passwd", str(tmp_path / ".." / "outside.txt")):
        r = client.post("/admin/models", json={"version": "x", "uri": uri}, headers=auth)
        assert r.status_code == 403 and r.json()["error"] == "path_refused", r.text
    inside = tmp_path / "notes.txt"
    inside.write_text("hello")
    r = client.post("/admin/models", json={"version": "x", "uri": str(inside)}, headers=auth)
    assert r.status_code == 403 and r.json()["error"] == "path_refused"
    r = client.post("/admin/models", json={"version": "x", "uri": artifacts["v2"][0], "sha256": "0" * 64},
                    headers=auth)
    assert r.status_code == 422 and artifacts["v2"][1] not in r.text  # the actual digest is never echoed
    no_root = create_production_server("m", enable_monitoring=False, enable_ab_testing=False, admin_token="t")
    with TestClient(no_root.app) as c:
        r = c.post("/admin/models", json={"version": "x", "uri": artifacts["v2"][0]},
                   headers={"authorization": "Bearer t"})
        assert r.status_code == 403 and r.json()["error"] == "model_root_unset"
    no_root.close()


def test_admin_refuses_joblib_without_the_flag_and_redirects_to_other_hosts(client, server, tmp_path):
    import http.server
    import threading

    import joblib
    from sklearn.linear_model import LogisticRegression

    from mlops.serving.model_store import sha256_hex

    auth = {"authorization": "Bearer secret"}
    x = np.random.default_rng(0).normal(size=(50, 3))
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), path)
    r = client.post("/admin/models", json={"version": "j", "uri": str(path), "format": "joblib",
                                           "sha256": sha256_hex(path.read_bytes())}, headers=auth)
    assert r.status_code == 422 and "--allow-unsafe-formats" in r.json()["message"], r.text

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            target = "http://127.0.0.2:9/model.skops" if "away" in self.path else "/model-here.skops"
            if self.path.endswith("model-here.skops"):
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        r = client.post("/admin/models", json={"version": "r", "uri": f"{base}/away/model.skops",
                                               "sha256": "0" * 64}, headers=auth)
        assert r.status_code == 422 and "redirects to another host" in r.json()["message"], r.text
        same = client.post("/admin/models", json={"version": "r", "uri": f"{base}/model.skops", "sha256": "0" * 64},
                           headers=auth)
        assert same.status_code == 422 and "HTTP 404" in same.json()["message"]  # followed on the same host
    finally:
        httpd.shutdown()


def test_request_errors_reach_metrics_and_monitoring_and_latency_is_a_histogram(client, server):
    """Reproduced: monitoring never saw request errors; request_errors missed 5xx and schema 4xx;
    no latency histogram on /metrics."""
    client.post("/predict", json={"features": ROW})
    client.post("/predict", json={"features": {"a": "x", "b": 1.0}})  # invalid_feature
    client.post("/predict", json={"nope": 1})  # schema 4xx
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})  # malformed
    client.post("/predict/batch", json={"batch_features": [ROW, ROW, ROW]})
    client.get("/no-such-route")
    text = client.get("/metrics").text
    assert 'mlops_server_request_errors_total{code="422",reason="invalid_feature"} 1.0' in text
    assert 'mlops_server_request_errors_total{code="422",reason="validation_error"} 1.0' in text
    assert 'mlops_server_request_errors_total{code="400",reason="malformed_json"} 1.0' in text
    assert 'mlops_server_request_errors_total{code="404",reason="not_found"} 1.0' in text
    assert 'mlops_server_request_duration_seconds_count{route="/predict"} 4.0' in text
    assert 'mlops_server_request_duration_seconds_bucket{le="0.005",route="/predict"}' in text
    assert "mlops_server_micro_batch_rows_count 1.0" in text
    assert 'mlops_server_batch_request_rows_bucket{le="4.0"} 1.0' in text
    server.recorder.flush()
    summary = server.monitor.get_monitoring_summary(hours=1)
    assert summary["failed_predictions"] == 3 and summary["total_predictions"] == 4


def test_docs_hide_admin_routes_without_the_token(client):
    public = client.get("/openapi.json").json()
    assert not [p for p in public["paths"] if p.startswith("/admin")]
    assert "/predict" in public["paths"]
    assert client.get("/docs").status_code == 200
    admin = client.get("/openapi.json", headers={"authorization": "Bearer secret"}).json()
    assert "/admin/models" in admin["paths"]
    wrong = client.get("/openapi.json", headers={"authorization": "Bearer nope"}).json()
    assert "/admin/models" not in wrong["paths"]
