"""The router's table watcher on a ConfigMap-shaped folder, and its feedback body handling."""

from __future__ import annotations

import json
import os

from mlops.serving.router import TableWatcher, _feedback_items, _label_variant


def _table(share: float) -> dict:
    return {"model": "m", "stable_version": "v1",
            "versions": {"v1": {"url": "http://a:1", "weight": 1}, "v2": {"url": "http://b:1"}},
            "experiment": {"name": "e", "salt": "s", "control": "v1", "treatment": "v2", "treatment_share": share}}


def _configmap_revision(root, n: int, content: str) -> None:
    revision = root / f"..rev{n}"
    revision.mkdir()
    (revision / "routing.json").write_text(content)
    os.symlink(revision.name, root / "..tmp")
    os.replace(root / "..tmp", root / "..data")
    if not (root / "routing.json").is_symlink():
        os.symlink("..data/routing.json", root / "routing.json")


def test_watcher_follows_symlink_swaps_and_keeps_the_last_good_table(tmp_path):
    results = []
    _configmap_revision(tmp_path, 1, json.dumps(_table(0.1)))
    watcher = TableWatcher(tmp_path / "routing.json", on_reload=results.append)
    assert watcher.table.experiment.treatment_share == 0.1
    assert watcher.check() is False  # nothing changed

    _configmap_revision(tmp_path, 2, json.dumps(_table(0.3)))
    assert watcher.check() is True
    assert watcher.table.experiment.treatment_share == 0.3

    _configmap_revision(tmp_path, 3, '{"model": "m", "stable_version": "v9", "versions": {}}')
    assert watcher.check() is False
    assert watcher.table.experiment.treatment_share == 0.3
    assert "invalid routing table" in watcher.last_error

    (tmp_path / "routing.json").unlink()  # a missing file (mid-swap) changes nothing
    assert watcher.check() is False
    os.symlink("..data/routing.json", tmp_path / "routing.json")
    _configmap_revision(tmp_path, 4, json.dumps(_table(0.5)))
    assert watcher.check() is True and watcher.last_error is None
    assert results == ["ok", "error", "ok"]


def test_feedback_bodies_of_every_accepted_shape_split_and_rebuild():
    single = {"prediction_id": "a", "true_label": 1}
    items, rebuild = _feedback_items(single)
    assert items == [single] and rebuild(items) == single
    listed = {"feedback": [{"prediction_id": "a", "true_label": 1}, {"prediction_id": "b", "true_label": 0}],
              "source": "crm"}
    items, rebuild = _feedback_items(listed)
    assert [i["prediction_id"] for i in items] == ["a", "b"]
    assert rebuild(items[1:]) == {"feedback": [{"prediction_id": "b", "true_label": 0}], "source": "crm"}
    bare = [{"prediction_id": "a", "true_label": 1}]
    assert _feedback_items(bare)[0] == bare
    assert _feedback_items({"true_label": 1})[0] == []
    assert _feedback_items("nope")[0] == []


def test_variant_is_filled_only_where_the_server_left_it_empty():
    assert json.loads(_label_variant(b'{"prediction": 1, "variant": null}', "treatment"))["variant"] == "treatment"
    assert json.loads(_label_variant(b'{"prediction": 1, "variant": "control"}', "treatment"))["variant"] == "control"
    batch = json.loads(_label_variant(b'{"predictions": [{"prediction": 1}, {"variant": "x"}]}', "control"))
    assert [p["variant"] for p in batch["predictions"]] == ["control", "x"]
    assert _label_variant(b"not json", "control") == b"not json"
