"""Adaptive micro-batching: concurrent single-row predictions share model calls, and every request
gets exactly what predicting its row alone gives (labels and confidences), errors included."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlops.serving.batching import MicroBatcher, predict_many
from mlops.serving.model_store import LoadedModel, ModelMetadata, schema_from_estimator


def _model(seed: int = 0, n_features: int = 6) -> LoadedModel:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, n_features))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.5, size=500) > 0).astype(int)
    pipe = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression()).fit(x, y)
    meta = ModelMetadata(model_name="m", version=f"v{seed}", feature_schema=schema_from_estimator(pipe))
    return LoadedModel(pipe, meta)


def _rows(n: int, seed: int = 1, n_features: int = 6) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, n_features)) * 3
    rows[rng.random(size=rows.shape) < 0.1] = np.nan  # imputed values take part too
    return rows.tolist()


def _assert_same(got: list, expected: list) -> None:
    """Labels identical; confidences equal up to float rounding (BLAS sums a row's dot product in a
    different order when it is part of a matrix: the last bit may differ, ~1e-16)."""
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=1e-12, atol=0)


async def _concurrently(batcher: MicroBatcher, model, rows) -> list:
    return await asyncio.gather(*(batcher.predict(model, row) for row in rows), return_exceptions=True)


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_batched_results_equal_row_by_row(mode):
    model = _model()
    rows = _rows(300)
    alone = [model.predict([row]) for row in rows]
    expected = [(labels[0], confidence[0]) for labels, confidence in alone]
    batcher = MicroBatcher(max_batch=64, mode=mode)
    got = asyncio.run(_concurrently(batcher, model, rows))
    batcher.close()
    _assert_same(got, expected)
    stats = batcher.stats()
    assert stats["rows"] == 300 and stats["max_batch_seen"] == 64 and stats["batches"] < 300


def test_single_request_runs_alone_without_waiting_for_company():
    model = _model()
    batcher = MicroBatcher(max_batch=64)

    async def one_at_a_time() -> list:
        return [await batcher.predict(model, row) for row in _rows(5)]

    asyncio.run(one_at_a_time())
    assert batcher.stats()["batches"] == 5 and batcher.stats()["max_batch_seen"] == 1


def test_requests_arriving_during_a_threaded_batch_form_the_next_batch():
    model = _model()
    batcher = MicroBatcher(max_batch=64, mode="thread")
    rows = _rows(40)

    async def staggered() -> list:
        first = asyncio.ensure_future(batcher.predict(model, rows[0]))
        await asyncio.sleep(0)  # the first batch (one row) is now computing in the thread
        rest = [asyncio.ensure_future(batcher.predict(model, row)) for row in rows[1:]]
        return await asyncio.gather(first, *rest)

    got = asyncio.run(staggered())
    batcher.close()
    _assert_same(got, [(lab[0], conf[0]) for lab, conf in (model.predict([row]) for row in rows)])
    assert batcher.stats()["batches"] == 2 and batcher.stats()["max_batch_seen"] == 39


def test_rows_of_two_versions_in_one_batch_go_to_their_own_model():
    a, b = _model(0), _model(5)
    rows = _rows(20)
    pairs = [(a if i % 2 else b, row) for i, row in enumerate(rows)]
    batcher = MicroBatcher()

    async def mixed() -> list:
        return await asyncio.gather(*(batcher.predict(m, row) for m, row in pairs))

    got = asyncio.run(mixed())
    _assert_same(got, [(lab[0], conf[0]) for lab, conf in (m.predict([row]) for m, row in pairs)])


class _Picky:
    """Fails any call that contains a row whose first value is negative (like an unseen category)."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, rows):
        self.calls += 1
        if any(row[0] < 0 for row in rows):
            raise ValueError(f"bad row in a call of {len(rows)}")
        return [int(row[0] > 1) for row in rows], [0.75] * len(rows)


def test_a_failing_row_fails_only_its_own_request():
    rows = [[0.5], [2.0], [-1.0], [3.0]]
    batcher = MicroBatcher()
    got = asyncio.run(_concurrently(batcher, _Picky(), rows))
    assert got[0] == (0, 0.75) and got[1] == (1, 0.75) and got[3] == (1, 0.75)
    assert isinstance(got[2], ValueError) and str(got[2]) == "bad row in a call of 1"


def test_predict_many_falls_back_row_by_row_only_on_failure():
    picky = _Picky()
    assert predict_many(picky, [[0.5], [2.0]]) == [(0, 0.75), (1, 0.75)] and picky.calls == 1
    with pytest.raises(ValueError):
        predict_many(picky, [[-1.0]])


def test_cancelled_requests_are_skipped():
    model = _model()
    batcher = MicroBatcher()

    async def cancel_one() -> list:
        tasks = [asyncio.ensure_future(batcher.predict(model, row)) for row in _rows(10)]
        await asyncio.sleep(0)
        tasks[3].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    got = asyncio.run(cancel_one())
    assert isinstance(got[3], asyncio.CancelledError)
    assert sum(isinstance(g, tuple) for g in got) == 9


def test_a_batcher_left_mid_batch_by_a_closed_loop_works_on_the_next_loop():
    model = _model()
    batcher = MicroBatcher()
    loop = asyncio.new_event_loop()
    task = loop.create_task(batcher.predict(model, _rows(1)[0]))
    loop.call_soon(loop.stop)
    loop.run_forever()  # the request is queued and its drain scheduled, but the loop stops first
    assert not task.done()
    task.cancel()
    loop.close()
    rows = _rows(3)
    got = asyncio.run(asyncio.wait_for(_concurrently(batcher, model, rows), timeout=10))
    _assert_same(got, [(lab[0], conf[0]) for lab, conf in (model.predict([row]) for row in rows)])
