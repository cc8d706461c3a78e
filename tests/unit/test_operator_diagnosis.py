"""Why pods do not become ready, summarised for status (mlops.operator.diagnosis)."""

from __future__ import annotations

from mlops.operator.diagnosis import diagnose


def pod(**status):
    return {"metadata": {"name": "p"}, "status": status}


UNSCHEDULABLE = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/1 nodes are available: 1 Too many pods."}])


def test_unschedulable_pods_are_counted():
    reason, message = diagnose({"status": {}}, [UNSCHEDULABLE, UNSCHEDULABLE, pod()])
    assert reason == "Unschedulable" and message.startswith("2/3 pods Unschedulable") and "Too many pods" in message


def test_init_container_failure_wins_and_carries_its_message():
    failed_init = pod(initContainerStatuses=[{"name": "fetch-artifact", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                              "lastState": {"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}}])
    reason, message = diagnose(None, [UNSCHEDULABLE, failed_init])
    assert reason == "InitContainerFailed" and "fetch-artifact" in message and "sha256 mismatch" in message


def test_image_pull_and_crash_loop():
    pull = pod(containerStatuses=[{"name": "model", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                          "message": "Back-off pulling image"}}}])
    assert diagnose(None, [pull])[0] == "ImagePullBackOff"
    crash = pod(containerStatuses=[{"name": "model", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}])
    reason, message = diagnose(None, [crash, pull])
    assert reason == "CrashLoopBackOff" and "restarts 4" in message


def test_progress_deadline_exceeded_names_what_the_pods_say():
    dep = {"status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                      "message": 'ReplicaSet "m-v1-1" has timed out progressing.'}]}}
    reason, message = diagnose(dep, [UNSCHEDULABLE])
    assert reason == "ProgressDeadlineExceeded" and "timed out" in message and "Unschedulable" in message
    assert diagnose(dep, [])[0] == "ProgressDeadlineExceeded"
    assert diagnose({"status": {}}, [pod()]) is None
