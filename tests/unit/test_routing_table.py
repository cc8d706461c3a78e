"""Routing table validation and the router's assignment decisions (pure: no sockets)."""

from __future__ import annotations

import json
import random

import pytest

from mlops.serving.routing_table import (
    RoutingTable,
    choose_version,
    load_routing_table,
    parse_routing_table,
    stable_only_table,
)


def _table(share: float = 0.3, *, paused: bool = False, segment: dict | None = None,
           experiment: bool = True) -> RoutingTable:
    data = {
        "model": "alzheimer_classifier",
        "stable_version": "v1.0.0",
        "versions": {"v1.0.0": {"url": "http://v1:8080", "weight": 1.0},
                     "v2.0.0": {"url": "http://v2:8080/", "weight": 0.0}},
        "experiment": {"name": "alzheimer_model_v2_test", "salt": "s-123", "control": "v1.0.0",
                       "treatment": "v2.0.0", "treatment_share": share, "segment": segment,
                       "paused": paused} if experiment else None,
    }
    return RoutingTable.model_validate(data)


USERS = [f"user-{i}" for i in range(10_000)]


def test_ten_thousand_users_at_split_0_3_land_30_percent_in_treatment():
    table = _table(0.3)
    treated = sum(choose_version(table, u)[1] == "treatment" for u in USERS)
    assert abs(treated / len(USERS) - 0.3) <= 0.015, treated


def test_ramping_0_3_to_0_5_keeps_every_treatment_user_in_treatment():
    before = {u for u in USERS if choose_version(_table(0.3), u)[0] == "v2.0.0"}
    after = {u for u in USERS if choose_version(_table(0.5), u)[0] == "v2.0.0"}
    assert before <= after
    assert abs(len(after) / len(USERS) - 0.5) <= 0.015


def test_assignment_is_a_function_of_salt_and_user_only():
    table = _table(0.3)
    first = [choose_version(table, u) for u in USERS[:500]]
    rebuilt = parse_routing_table(table.to_json())
    assert [choose_version(rebuilt, u) for u in USERS[:500]] == first
    other_salt = _table(0.3).model_copy(update={"experiment": table.experiment.model_copy(update={"salt": "x"})})
    assert [choose_version(other_salt, u) for u in USERS[:500]] != first


def test_paused_experiment_and_anonymous_requests_get_control():
    paused = _table(0.9, paused=True)
    assert {choose_version(paused, u) for u in USERS[:200]} == {("v1.0.0", "control")}
    assert choose_version(_table(1.0), None) == ("v1.0.0", "control")


def test_users_outside_the_segment_get_control():
    table = _table(1.0, segment={"Age": {"min": 65, "max": 85}, "region": ["north"]})
    assert choose_version(table, "u1", {"Age": 70, "region": "north"}) == ("v2.0.0", "treatment")
    assert choose_version(table, "u1", {"Age": 50, "region": "north"}) == ("v1.0.0", "control")
    assert choose_version(table, "u1", {"Age": 70}) == ("v1.0.0", "control")
    assert choose_version(table, "u1", None) == ("v1.0.0", "control")


def test_weights_without_experiment_are_sticky_and_proportional():
    table = _table(experiment=False)
    table.versions["v1.0.0"].weight = 0.8
    table.versions["v2.0.0"].weight = 0.2
    picks = [choose_version(table, u)[0] for u in USERS]
    assert abs(picks.count("v2.0.0") / len(USERS) - 0.2) <= 0.015
    assert picks == [choose_version(table, u)[0] for u in USERS]
    rng = random.Random(7)
    anonymous = [choose_version(table, None, rng=rng)[0] for _ in range(5_000)]
    assert abs(anonymous.count("v2.0.0") / 5_000 - 0.2) <= 0.02


def test_single_version_table_is_all_stable():
    table = stable_only_table("m", "v3", "http://m-v3:8080")
    assert choose_version(table, "anyone") == ("v3", "stable")
    assert table.url_for("v3") == "http://m-v3:8080"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"stable_version": "v9"}, "stable_version 'v9' is not one of versions"),
        ({"experiment": {"name": "e", "salt": "s", "control": "v1.0.0", "treatment": "v7",
                         "treatment_share": 0.1}}, "experiment.treatment 'v7'"),
        ({"experiment": {"name": "e", "salt": "s", "control": "v1.0.0", "treatment": "v2.0.0",
                         "treatment_share": 1.5}}, "experiment.treatment_share"),
        ({"versions": {"v1.0.0": {"url": "ftp://x"}}}, "url must start with http"),
        ({"surprise": 1}, "surprise"),
        ({"experiment": {"name": "e", "salt": "s", "control": "v1.0.0", "treatment": "v2.0.0",
                         "treatment_share": 0.1, "segment": {"age": {"min": 5, "bogus": 1}}}}, "segment"),
    ],
)
def test_invalid_tables_are_rejected_with_the_problem_named(patch, message):
    data = json.loads(_table().to_json())
    data.update(patch)
    with pytest.raises(ValueError, match=message):
        parse_routing_table(json.dumps(data))


def test_yaml_and_json_files_load_the_same_table(tmp_path):
    table = _table()
    (tmp_path / "routing.json").write_text(table.to_json())
    yaml_text = "\n".join([
        "model: alzheimer_classifier", "stable_version: v1.0.0", "versions:",
        "  v1.0.0: {url: 'http://v1:8080', weight: 1.0}", "  v2.0.0: {url: 'http://v2:8080', weight: 0.0}",
        "experiment:", "  name: alzheimer_model_v2_test", "  salt: s-123", "  control: v1.0.0",
        "  treatment: v2.0.0", "  treatment_share: 0.3", "  segment: null", "  paused: false",
    ])
    (tmp_path / "routing.yaml").write_text(yaml_text)
    assert load_routing_table(tmp_path / "routing.json") == load_routing_table(tmp_path / "routing.yaml") == table
    with pytest.raises(ValueError, match="cannot read"):
        load_routing_table(tmp_path / "absent.json")
