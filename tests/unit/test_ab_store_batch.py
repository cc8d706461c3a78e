"""The model server's group commit of experiment predictions gives exactly the counters of recording
them one by one, and a retried batch is not counted twice."""

from __future__ import annotations

import random

from mlops.store.ab_store import ABStore, PredictionRecord


def _records(seed: int, n: int) -> list[PredictionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rng.randrange(40)}"
        variant = "treatment" if hash(user) % 2 else "control"
        out.append(PredictionRecord(f"id{seed}-{i}", "exp", user, variant, rng.random() < 0.9, "v1",
                                    rng.choice([0, 1]), rng.uniform(0.1, 5.0), 1000.0 + i, rng.choice([0.3, 0.5]),
                                    seed % 2))
    return out


def _state(store: ABStore) -> tuple:
    share = store.db.query("SELECT share_sum FROM ab_experiments WHERE name = 'exp'")[0][0]
    exposures = sorted(tuple(r) for r in store.db.query("SELECT user_id, variant, share FROM ab_exposures"))
    counters = store.counters("exp")
    rounded = {v: {k: round(x, 9) for k, x in c.items()} for v, c in counters.items()}
    units = sorted((*r[:5], round(r[5], 9), round(r[6], 9)) for r in store.db.query(
        "SELECT experiment, phase, user_id, metric, variant, n, s FROM ab_unit_sums"))
    arms = sorted((*r[:5], *(round(x, 6) for x in r[5:])) for r in store.db.query(
        "SELECT experiment, phase, variant, metric, units, n, s, nn, ss, ns FROM ab_arm_sums"))
    return rounded, round(share, 9), exposures, units, arms


def test_batched_recording_equals_one_by_one_and_is_idempotent(tmp_path):
    one, many = ABStore(tmp_path / "one.db"), ABStore(tmp_path / "many.db")
    for store in (one, many):
        store.create_experiment("exp", {}, 0.0)
    batches = [_records(1, 120), _records(2, 80), _records(3, 1)]
    for batch in batches:
        for rec in batch:
            one.record_prediction(rec)
        assert many.record_predictions(batch) == len(batch)
    assert many.record_predictions(batches[0][:50] + batches[1]) == 0  # a retried batch
    assert _state(one) == _state(many)
    assert many.db.query("SELECT COUNT(*) FROM ab_predictions")[0][0] == 201


def test_a_user_switching_variant_inside_one_batch_is_counted_as_one_by_one(tmp_path):
    one, many = ABStore(tmp_path / "one.db"), ABStore(tmp_path / "many.db")
    for store in (one, many):
        store.create_experiment("exp", {}, 0.0)
    batch = [PredictionRecord(f"id{i}", "exp", "u1", "control" if i < 3 else "treatment", True, "v1", 1,
                              1.0 + i, 1000.0 + i, 0.5) for i in range(6)]
    batch += _records(7, 30)
    for rec in batch:
        one.record_prediction(rec)
    assert many.record_predictions(batch) == len(batch)
    assert _state(one) == _state(many)
