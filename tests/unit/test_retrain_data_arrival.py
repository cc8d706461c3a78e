"""Data-arrival trigger: rows counted in new CSV/Parquet files, each file once (even across
restarts), settling files counted when stable, driven step by step through check_once()."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops.core import retrain_policy as p
from mlops.monitoring.data_trigger import count_rows, create_data_trigger, matches

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def write_csv(path: Path, rows: int, start: int = 0, mode: str = "w") -> Path:
    with path.open(mode, newline="") as fh:
        writer = csv.writer(fh)
        if mode == "w":
            writer.writerow(["age", "score", "label"])
        for i in range(start, start + rows):
            writer.writerow([i % 90, f"{i * 0.5:.1f}", i % 2])
    return path


def write_parquet(path: Path, rows: int) -> Path:
    pq.write_table(pa.table({"x": list(range(rows)), "y": [float(i) for i in range(rows)]}), path)
    return path


class Calls(list):
    def __call__(self, trigger_type, reason):
        self.append((trigger_type, reason))
        return True


@pytest.fixture
def folders(tmp_path):
    raw, processed = tmp_path / "data" / "raw", tmp_path / "data" / "processed"
    raw.mkdir(parents=True)
    processed.mkdir(parents=True)
    return raw, processed


def make(folders, clock, calls, name="data-model", **extra):
    config = {"min_new_samples": 1000, "data_directories": [str(f) for f in folders],
              "watch_file_patterns": [".csv", ".parquet"], "min_hours_between_retrains": 0, **extra}
    trigger = create_data_trigger(name, config, None, clock=clock)
    trigger.retraining_handler = calls
    return trigger


def step(trigger, clock, seconds=1.0):
    clock.now += seconds
    return trigger.check_once(wait=True)


def test_count_rows_for_csv_parquet_and_quoted_newlines(tmp_path):
    assert count_rows(write_csv(tmp_path / "a.csv", 1200)) == 1200
    assert count_rows(write_parquet(tmp_path / "b.parquet", 321)) == 321
    quoted = tmp_path / "q.csv"
    quoted.write_text('id,note\n1,"two\nlines"\n\n2,plain\n')
    assert count_rows(quoted) == 2
    (tmp_path / "empty.csv").write_text("")
    assert count_rows(tmp_path / "empty.csv") == 0


def test_patterns_accept_suffixes_and_globs():
    assert matches("x.csv", [".csv"]) and matches("x.csv", ["*.csv"])
    assert matches("batch_7.parquet", ["batch_*.parquet"]) and not matches("other.parquet", ["batch_*.parquet"])
    assert not matches("x.csv.tmp", [".csv", "*.csv"])


def test_1200_row_csv_triggers_one_data_arrival_and_10_rows_do_not(folders):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    write_csv(folders[0] / "small.csv", 10)
    assert step(trigger, clock).action == p.NONE  # first sight
    assert step(trigger, clock).action == p.NONE  # stable: 10 rows < 1000
    assert trigger.status()["pending_new_samples"] == 10

    write_csv(folders[1] / "batch.csv", 1200)
    assert step(trigger, clock).action == p.NONE  # settling
    decision = step(trigger, clock)
    assert (decision.action, decision.trigger_type) == (p.RUN, p.DATA_ARRIVAL)
    assert "1210 new samples" in decision.reason
    assert calls == [(p.DATA_ARRIVAL, decision.reason)]
    assert trigger.get_trigger_history()[0]["data_size"] == 1210
    for _ in range(5):
        assert step(trigger, clock).action == p.NONE
    assert len(calls) == 1
    assert trigger.status()["pending_new_samples"] == 0


def test_restarted_trigger_does_not_count_the_same_files_again(folders):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    write_csv(folders[0] / "big.csv", 1200)
    write_csv(folders[0] / "small.csv", 10)
    step(trigger, clock)
    assert step(trigger, clock).trigger_type == p.DATA_ARRIVAL
    write_csv(folders[0] / "later.csv", 10)
    step(trigger, clock)
    step(trigger, clock)
    trigger.store.close()

    restarted = make(folders, clock, calls)
    for _ in range(4):
        assert step(restarted, clock).action == p.NONE
    assert restarted.status()["pending_new_samples"] == 10  # only later.csv, counted once
    # 10 + 985 = 995 stays below 1000: had later.csv been counted twice, 1005 would trigger
    write_csv(folders[0] / "more.csv", 985)
    step(restarted, clock)
    assert step(restarted, clock).action == p.NONE
    write_csv(folders[0] / "last.csv", 5)
    step(restarted, clock)
    assert step(restarted, clock).trigger_type == p.DATA_ARRIVAL
    assert [c[0] for c in calls] == [p.DATA_ARRIVAL, p.DATA_ARRIVAL]


def test_parquet_rows_count_and_a_file_being_written_counts_once_stable(folders):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    growing = write_csv(folders[0] / "growing.csv", 600)
    step(trigger, clock)
    write_csv(growing, 300, start=600, mode="a")  # still being written at the next look
    assert step(trigger, clock).action == p.NONE
    assert trigger.status()["pending_new_samples"] == 0
    assert step(trigger, clock).action == p.NONE  # stable now: 900 rows
    assert trigger.status()["pending_new_samples"] == 900
    write_parquet(folders[1] / "extra.parquet", 100)
    step(trigger, clock)
    decision = step(trigger, clock)
    assert decision.trigger_type == p.DATA_ARRIVAL and "1000 new samples" in decision.reason


def test_a_file_that_grows_after_training_contributes_only_its_new_rows(folders):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    path = write_csv(folders[0] / "stream.csv", 1000)
    step(trigger, clock)
    assert step(trigger, clock).trigger_type == p.DATA_ARRIVAL
    write_csv(path, 400, start=1000, mode="a")
    step(trigger, clock)
    step(trigger, clock)
    assert trigger.status()["pending_new_samples"] == 400
    write_csv(path, 600, start=1400, mode="a")
    step(trigger, clock)
    assert step(trigger, clock).trigger_type == p.DATA_ARRIVAL
    assert len(calls) == 2


def test_failed_run_leaves_the_rows_new(folders):
    clock = FakeClock()
    calls = Calls()
    trigger = make(folders, clock, calls)
    trigger.retraining_handler = lambda t, r: False
    write_csv(folders[0] / "a.csv", 1500)
    step(trigger, clock)
    assert step(trigger, clock).trigger_type == p.DATA_ARRIVAL
    assert trigger.get_trigger_history()[0]["status"] == "failed"
    assert trigger.status()["pending_new_samples"] == 1500
    trigger.retraining_handler = calls
    assert step(trigger, clock).trigger_type == p.DATA_ARRIVAL
    assert trigger.status()["pending_new_samples"] == 0


def test_files_present_at_first_start_are_baseline_unless_asked(folders):
    write_csv(folders[0] / "history.csv", 5000)
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    for _ in range(3):
        assert step(trigger, clock).action == p.NONE
    counting = make(folders, clock, calls, name="other-model", count_existing_files=True)
    step(counting, clock)
    assert step(counting, clock).trigger_type == p.DATA_ARRIVAL


def test_hidden_unmatched_and_missing_paths_are_ignored(folders, tmp_path):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls, data_directories=[str(folders[0]), str(tmp_path / "absent")])
    write_csv(folders[0] / ".partial.csv", 2000)
    write_csv(folders[0] / "notes.txt", 2000)
    sub = folders[0] / "2027" / "01"
    sub.mkdir(parents=True)
    write_csv(sub / "nested.csv", 1000)
    step(trigger, clock)
    decision = step(trigger, clock)
    assert decision.trigger_type == p.DATA_ARRIVAL and "1000 new samples" in decision.reason


def test_a_deleted_file_stops_counting(folders):
    clock, calls = FakeClock(), Calls()
    trigger = make(folders, clock, calls)
    path = write_csv(folders[0] / "gone.csv", 800)
    step(trigger, clock)
    step(trigger, clock)
    assert trigger.status()["pending_new_samples"] == 800
    os.remove(path)
    step(trigger, clock)
    assert trigger.status()["pending_new_samples"] == 0
