"""The Argo CD health checks in deploy/argocd/health/ give the health their testdata expects, when
run in gopher-lua (the Lua engine Argo CD embeds) the way Argo CD runs them: the object as global
`obj`, a table with `status` and `message` returned. Every fixture is a valid object of its CRD,
and every kind has fixtures for each health its status can map to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "deploy" / "argocd" / "health" / "mlops.duetmind.io"
CRD_FILES = {"ModelDeployment": "modeldeployments.yaml", "ABExperiment": "abexperiments.yaml",
             "RetrainPolicy": "retrainpolicies.yaml"}
# ModelDeployment has no suspended state: nothing pauses serving.
STATES = {"ModelDeployment": {"Healthy", "Progressing", "Degraded"},
          "ABExperiment": {"Healthy", "Progressing", "Degraded", "Suspended"},
          "RetrainPolicy": {"Healthy", "Progressing", "Degraded", "Suspended"}}


def cases():
    for kind in CRD_FILES:
        for case in yaml.safe_load((HEALTH / kind / "health_test.yaml").read_text())["tests"]:
            yield pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}")


def run_health(luahealth: str, kind: str, obj: dict) -> dict:
    proc = subprocess.run([luahealth, str(HEALTH / kind / "health.lua")], input=json.dumps(obj),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("kind", "case"), list(cases()))
def test_health_matches_testdata(chart_tools, kind, case):
    obj = yaml.safe_load((HEALTH / kind / case["inputPath"]).read_text())
    assert run_health(chart_tools["luahealth"], kind, obj) == case["healthStatus"]


@pytest.mark.parametrize("kind", list(CRD_FILES))
def test_every_state_has_a_fixture_and_every_fixture_is_used(kind):
    tests = yaml.safe_load((HEALTH / kind / "health_test.yaml").read_text())["tests"]
    assert {t["healthStatus"]["status"] for t in tests} == STATES[kind]
    used = {t["inputPath"] for t in tests}
    assert used == {f"testdata/{p.name}" for p in (HEALTH / kind / "testdata").glob("*.yaml")}
    # The generation rule is tested for every kind.
    assert any("observe generation" in t["healthStatus"]["message"] for t in tests)


def _schema(kind: str) -> dict:
    crd = yaml.safe_load((REPO / "crds" / CRD_FILES[kind]).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("kind", list(CRD_FILES))
def test_fixtures_are_valid_objects_of_their_crd(kind):
    validator = jsonschema.Draft4Validator(_schema(kind))
    for path in sorted((HEALTH / kind / "testdata").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        assert obj["kind"] == kind and obj["apiVersion"] == "mlops.duetmind.io/v1alpha1"
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, f"{path.name}: {errors}"


def test_the_generation_rule_wins_over_a_healthy_phase(chart_tools):
    """A Ready status written for an older spec must not be reported Healthy."""
    obj = yaml.safe_load((HEALTH / "ModelDeployment" / "testdata" / "healthy.yaml").read_text())
    assert run_health(chart_tools["luahealth"], "ModelDeployment", obj)["status"] == "Healthy"
    obj["metadata"]["generation"] = obj["status"]["observedGeneration"] + 1
    assert run_health(chart_tools["luahealth"], "ModelDeployment", obj)["status"] == "Progressing"


def test_argocd_cm_patch_carries_each_health_lua_verbatim():
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-health-patch.yaml").read_text())
    for kind in CRD_FILES:
        key = f"resource.customizations.health.mlops.duetmind.io_{kind}"
        assert patch["data"][key] == (HEALTH / kind / "health.lua").read_text()
