"""ABTestingManager against real SQLite files: lifecycle, segments, pausing, outcomes, persistence,
threads, serialisation and verdicts (mlops.monitoring.ab_testing)."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest

from mlops.core.assignment import assignment_bucket
from mlops.monitoring.ab_testing import (
    ABTestConfig,
    ABTestingManager,
    ABTestResult,
    ExperimentStatus,
    UserSegmenter,
)


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ConstantModel:
    """Predicts a constant; optionally advances a fake timer to simulate latency."""

    def __init__(self, value=1, timer=None, latency_s=0.0, seed=0):
        self.value, self.timer, self.latency_s = value, timer, latency_s
        self.rng = np.random.default_rng(seed)
        self.seen_shapes = []

    def predict(self, X):
        self.seen_shapes.append(np.shape(X))
        if self.timer is not None:
            self.timer.now += self.latency_s * (0.8 + 0.4 * float(self.rng.random()))
        return np.array([self.value] * len(X))


def _config(name="exp", **kw) -> ABTestConfig:
    return ABTestConfig(experiment_name=name, model_a_version="a", model_b_version="b", **kw)


def _models(**kw):
    return {"a": ConstantModel(**kw), "b": ConstantModel(**kw)}


def test_default_database_lives_under_mlops_home(_isolated_mlops_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = ABTestingManager()
    assert m.experiment_db == str(_isolated_mlops_home / "ab_experiments.db")
    m.create_experiment(_config())
    assert (_isolated_mlops_home / "ab_experiments.db").exists()
    assert not (tmp_path / "ab_experiments.db").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"traffic_split": 1.5},
        {"traffic_split": 0.0},
        {"significance_level": 0.0},
        {"primary_metric": "vibes"},
        {"secondary_metrics": ["nope"]},
        {"segment_criteria": {"age": {"min": 9, "max": 1}}},
        {"ramping_strategy": "whenever"},
        {"min_samples_per_variant": -1},
        {"guardrail_metrics": {"latency": -1}},
    ],
)
def test_invalid_configs_are_rejected(bad):
    m = ABTestingManager()
    with pytest.raises(ValueError):
        m.create_experiment(_config(**bad))


def test_duplicate_names_are_rejected_and_unknown_names_raise():
    m = ABTestingManager()
    assert m.create_experiment(_config()) == "exp"
    with pytest.raises(ValueError, match="already exists"):
        m.create_experiment(_config())
    with pytest.raises(ValueError, match="does not exist"):
        m.start_experiment("missing")


def test_lifecycle_and_status():
    clock = FakeClock()
    m = ABTestingManager(clock=clock)
    m.create_experiment(_config())
    st = m.get_experiment_status("exp")
    assert st["status"] == "draft" and not st["is_active"] and st["started_at"] is None
    assert set(st) >= {"experiment_name", "status", "created_at", "started_at", "ended_at", "sample_counts", "is_active"}
    assert m.start_experiment("exp") is True
    assert "exp" in m.active_experiments
    clock.now += 60
    assert m.pause_experiment("exp") is True
    assert m.get_experiment_status("exp")["status"] == ExperimentStatus.PAUSED
    assert "exp" not in m.active_experiments
    assert m.start_experiment("exp") is True
    result = m.stop_experiment("exp")
    assert isinstance(result, ABTestResult)
    st = m.get_experiment_status("exp")
    assert st["status"] == "completed" and st["ended_at"] is not None and st["end_reason"] == "Manual stop"
    with pytest.raises(ValueError):
        m.start_experiment("exp")
    with pytest.raises(ValueError):
        m.stop_experiment("exp")
    assert [e["experiment_name"] for e in m.list_experiments()] == ["exp"]


def test_paused_experiment_serves_control_and_counts_nothing():
    m = ABTestingManager()
    m.create_experiment(_config(traffic_split=0.5))
    m.start_experiment("exp")
    m.pause_experiment("exp")
    models = _models()
    variants = {m.make_prediction("exp", f"u{i}", {"x": 1.0}, models)["variant"] for i in range(200)}
    assert variants == {"control"}
    assert m.get_experiment_status("exp")["sample_counts"] == {"control": 0, "treatment": 0}


def test_segment_outsiders_get_control_and_are_counted_in_neither_arm():
    m = ABTestingManager()
    m.create_experiment(_config(
        traffic_split=0.5,
        segment_criteria={"age": {"min": 65, "max": 85}, "education": {"min": 8}, "region": ["north", "south"]},
    ))
    m.start_experiment("exp")
    models = _models()
    outside = [m.make_prediction("exp", f"o{i}", {"age": 40, "education": 12, "region": "north"}, models)
               for i in range(100)]
    missing = [m.make_prediction("exp", f"m{i}", {"age": 70, "region": "north"}, models) for i in range(50)]
    assert {r["variant"] for r in outside + missing} == {"control"}
    assert m.get_experiment_status("exp")["sample_counts"] == {"control": 0, "treatment": 0}
    inside = [m.make_prediction("exp", f"i{i}", {"age": 70, "education": 12, "region": "south"}, models)
              for i in range(200)]
    counts = m.get_experiment_status("exp")["sample_counts"]
    assert counts["control"] + counts["treatment"] == 200
    assert counts["treatment"] == sum(r["variant"] == "treatment" for r in inside) > 0


def test_assignment_is_sticky_salted_by_experiment_name():
    m = ABTestingManager()
    m.create_experiment(_config(traffic_split=0.3))
    m.start_experiment("exp")
    models = _models()
    for i in range(100):
        r1 = m.make_prediction("exp", f"u{i}", {"x": 1}, models)
        r2 = m.make_prediction("exp", f"u{i}", {"x": 2}, models)
        assert r1["variant"] == r2["variant"]
        assert (r1["variant"] == "treatment") == (assignment_bucket("exp", f"u{i}") < 0.3)
        assert r1["model_version"] == ("b" if r1["variant"] == "treatment" else "a")


def test_ramp_moves_users_only_from_control_to_treatment():
    clock = FakeClock()
    m = ABTestingManager(clock=clock)
    m.create_experiment(_config(traffic_split=0.5, ramping_strategy="steps:0.1,0.3@1h"))
    m.start_experiment("exp")
    models = _models()
    users = [f"u{i}" for i in range(300)]
    early = {u: m.make_prediction("exp", u, {"x": 1}, models)["variant"] for u in users}
    clock.now += 3600
    later = {u: m.make_prediction("exp", u, {"x": 1}, models)["variant"] for u in users}
    assert m.get_experiment_status("exp")["current_treatment_share"] == 0.3
    assert all(later[u] == "treatment" for u in users if early[u] == "treatment")
    assert sum(v == "treatment" for v in later.values()) > sum(v == "treatment" for v in early.values())


def test_outcomes_join_by_prediction_id_and_by_oldest_unlabelled_per_user():
    m = ABTestingManager()
    m.create_experiment(_config(traffic_split=0.5))
    m.start_experiment("exp")
    models = {"a": ConstantModel(1), "b": ConstantModel(1)}
    first = m.make_prediction("exp", "alice", {"x": 1}, models)
    second = m.make_prediction("exp", "alice", {"x": 1}, models)
    assert first["prediction_id"] != second["prediction_id"]
    assert m.update_prediction_outcomes("exp", [("alice", 1)]) == 1
    assert m.store.get_prediction(first["prediction_id"])["labelled"] == 1
    assert m.store.get_prediction(second["prediction_id"])["labelled"] == 0
    assert m.record_outcome("exp", second["prediction_id"], 0) is True
    assert m.record_outcome("exp", second["prediction_id"], 1) is False  # already labelled
    assert m.record_outcome("exp", "no-such-id", 1) is False
    assert m.update_prediction_outcomes("exp", [("alice", 1), ("bob", 1)]) == 0
    arm = "treatment" if first["variant"] == "treatment" else "control"
    c = m.store.counters("exp")[arm]
    assert (c["labelled"], c["correct"], c["tp"], c["fp"]) == (2, 1, 1, 1)


def test_state_survives_a_restart(tmp_path):
    db = tmp_path / "ab.db"
    m = ABTestingManager(experiment_db=str(db))
    m.create_experiment(_config(traffic_split=0.5, min_samples_per_variant=10))
    m.start_experiment("exp")
    models = _models()
    outcomes = []
    for i in range(100):
        m.make_prediction("exp", f"u{i}", {"x": 1}, models)
        outcomes.append((f"u{i}", i % 3 == 0))
    m.update_prediction_outcomes("exp", outcomes)
    before = m.analyze_experiment("exp").to_dict()
    m.close()
    again = ABTestingManager(experiment_db=str(db))
    assert "exp" in again.active_experiments
    after = again.analyze_experiment("exp").to_dict()
    for key in ("samples_a", "samples_b", "metrics_a", "metrics_b", "winner", "confidence_intervals"):
        assert after[key] == before[key]
    assert again.get_experiment_status("exp")["is_active"]


def test_concurrent_threads_lose_nothing(tmp_path):
    m = ABTestingManager(experiment_db=str(tmp_path / "ab.db"))
    m.create_experiment(_config(traffic_split=0.5))
    m.start_experiment("exp")
    models = _models()
    errors = []

    def worker(t):
        try:
            for i in range(150):
                r = m.make_prediction("exp", f"t{t}-u{i}", {"x": i}, models)
                assert m.record_outcome("exp", r["prediction_id"], 1)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counters = m.store.counters("exp")
    assert sum(c["predictions"] for c in counters.values()) == 600
    assert sum(c["labelled"] for c in counters.values()) == 600
    assert sum(c["users"] for c in counters.values()) == 600


def test_numpy_values_serialise_and_models_get_a_2d_row():
    m = ABTestingManager()
    m.create_experiment(_config(secondary_metrics=["latency", "precision"]))
    m.start_experiment("exp")
    models = {"a": ConstantModel(np.int64(1)), "b": ConstantModel(np.int64(1))}
    r = m.make_prediction("exp", "u1", {"age": np.float64(70.0), "mmse": 25}, models)
    json.dumps(r)
    assert isinstance(r["prediction"], int)
    assert models["a"].seen_shapes + models["b"].seen_shapes == [(1, 2)]
    m.update_prediction_outcomes("exp", [("u1", np.int64(1))])
    json.dumps(m.analyze_experiment("exp").to_dict())
    json.dumps(m.list_experiments())


def test_list_row_model_like_the_guides_mock_and_string_features():
    class ListModel:
        def predict(self, X):
            assert len(X) == 1
            return [0 for _ in range(len(X))]

    m = ABTestingManager()
    m.create_experiment(_config())
    m.start_experiment("exp")
    r = m.make_prediction("exp", "u", {"region": "north", "age": 70}, {"a": ListModel(), "b": ListModel()})
    assert r["prediction"] == 0


def _run_traffic(m, n_users, p_label_a, p_label_b, seed):
    rng = np.random.default_rng(seed)
    models = {"a": ConstantModel(1), "b": ConstantModel(1)}
    outcomes = []
    for i in range(n_users):
        r = m.make_prediction("exp", f"user-{i}", {"x": 1.0}, models)
        p = p_label_b if r["variant"] == "treatment" else p_label_a
        outcomes.append((f"user-{i}", int(rng.random() < p)))
    m.update_prediction_outcomes("exp", outcomes)


def test_clear_improvement_is_declared_and_stop_returns_it():
    m = ABTestingManager()
    m.create_experiment(_config(min_samples_per_variant=200, minimum_detectable_effect=0.1))
    m.start_experiment("exp")
    _run_traffic(m, 1000, 0.7, 0.9, seed=5)
    result = m.analyze_experiment("exp")
    assert result.winner == "model_b", result.recommendation
    assert result.statistical_significance == {"accuracy": True}
    lo, hi = result.confidence_intervals["accuracy"]
    assert 0 < lo < 0.2 < hi
    assert result.sample_ratio_mismatch["mismatch"] is False
    assert result.metrics_b["accuracy"] > result.metrics_a["accuracy"]
    final = m.stop_experiment("exp")
    assert final.winner == "model_b"


def test_latency_guardrail_blocks_a_faster_is_worse_winner():
    timer = FakeClock(0.0)
    m = ABTestingManager(timer=timer)
    m.create_experiment(_config(min_samples_per_variant=200, minimum_detectable_effect=0.1,
                                guardrail_metrics={"latency": 5.0}, secondary_metrics=["latency"]))
    m.start_experiment("exp")
    rng = np.random.default_rng(9)
    models = {"a": ConstantModel(1, timer, 0.010, 1), "b": ConstantModel(1, timer, 0.030, 2)}
    outcomes = []
    for i in range(1000):
        r = m.make_prediction("exp", f"user-{i}", {"x": 1.0}, models)
        outcomes.append((f"user-{i}", int(rng.random() < (0.9 if r["variant"] == "treatment" else 0.7))))
    m.update_prediction_outcomes("exp", outcomes)
    result = m.analyze_experiment("exp")
    assert result.metrics_b["avg_latency"] > result.metrics_a["avg_latency"] + 15
    assert result.status == "guardrail_failed" and result.winner is None
    assert result.guardrails[0]["metric"] == "latency" and not result.guardrails[0]["passed"]
    assert result.statistical_significance["latency"] is True


def test_user_segmenter_compat():
    seg = UserSegmenter({"age": {"min": 65}}, salt="exp")
    assert seg.should_include_user("u", {"age": 70})
    assert not seg.should_include_user("u", {})
    assert seg.assign_variant("u", 0.5) in ("control", "treatment")


def test_importing_ab_testing_does_not_import_heavy_deps():
    import subprocess

    code = ("import sys, mlops.monitoring.ab_testing\n"
            "bad=[m for m in ('evidently','fastapi','kopf','kubernetes','starlette') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
