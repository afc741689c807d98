"""Emulator fidelity with the real ``kubectl``: discovery, get, get -w,
apply, patch and delete, through a generated kubeconfig."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NS = "flyte"
COLUMNS = ["NAME", "RUN", "ACTION", "PARENT", "TYPE", "TASKTYPE", "STATUS", "ATTEMPTS", "AGE"]
WIDE_COLUMNS = ["PHASE", "PROJECT", "DOMAIN", "CACHE", "PROGRESSING", "SUCCEEDED", "FAILED"]


_READERS: dict[int, queue.Queue[str]] = {}


def _line(proc: subprocess.Popen, timeout: float = 15) -> str:
    """The next line kubectl prints, waiting at most ``timeout`` seconds (a reader thread
    per process: a buffered pipe cannot be polled line by line)."""
    lines = _READERS.get(proc.pid)
    if lines is None:
        lines = _READERS[proc.pid] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in iter(proc.stdout.readline, "")],
            daemon=True,
        ).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"kubectl printed nothing for {timeout}s") from None


def _table(output: str, header: list[str]) -> list[dict[str, str]]:
    """kubectl's aligned table as rows of {column: text}; an empty cell is ""."""
    lines = output.splitlines()
    assert lines[0].split() == header, lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    ends = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(header, starts, ends, strict=True)
        }
        for line in lines[1:]
    ]


def _conditions(true_type: str, reason: str) -> list[dict[str, str]]:
    """The conditions the service (and Flyte's executor) writes: Progressing carries the
    phase's reason, False once a terminal condition is True."""
    when = "2026-01-01T00:00:00Z"
    progressing = "True" if true_type == "Progressing" else "False"
    out = [{"type": "Progressing", "status": progressing, "reason": reason, "message": "",
            "lastTransitionTime": when}]  # fmt: skip
    if true_type != "Progressing":
        out.append({"type": true_type, "status": "True", "reason": reason, "message": "",
                    "lastTransitionTime": when})  # fmt: skip
    return out


def _history(*phases: str) -> list[dict[str, str]]:
    return [{"phase": p, "occurredAt": "2026-01-01T00:00:00Z"} for p in phases]


pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl not installed (the machine image ships it; under CI its absence fails)",
)


@pytest.fixture
def kubectl(kube_emulator, tmp_path):
    kubeconfig = kube_emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    base = ["kubectl", f"--cache-dir={tmp_path / 'cache'}"]

    def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*base, *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    run.popen = lambda *args: subprocess.Popen(  # type: ignore[attr-defined]
        [*base, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run.env = env  # type: ignore[attr-defined]
    return run


def _manifest(tmp_path: Path, name: str, **spec: str) -> Path:
    doc = {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": {"name": name, "labels": {"flyte.org/run": "r1"}},
        "spec": {
            "project": "p",
            "domain": "d",
            "runName": "r1",
            "actionName": name,
            "actionType": "task",
            **spec,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def test_kubectl_apply_get_patch_delete(kubectl, kube_emulator, tmp_path, custom_api):
    path = _manifest(tmp_path, "a1")
    out = kubectl("apply", "-f", str(path)).stdout
    assert "taskaction.flyte.org/a1 created" in out
    out = kubectl("apply", "-f", str(path)).stdout
    assert "unchanged" in out
    path = _manifest(tmp_path, "a1", group="g2")
    out = kubectl("apply", "-f", str(path)).stdout
    assert "configured" in out
    assert (
        custom_api.get_namespaced_custom_object("flyte.org", "v1", NS, "taskactions", "a1")["spec"][
            "group"
        ]
        == "g2"
    )

    custom_api.patch_namespaced_custom_object_status(
        "flyte.org",
        "v1",
        NS,
        "taskactions",
        "a1",
        {"status": {"phaseHistory": _history("Queued", "Executing")}},
    )
    # Server-side Table with the CRD's printer columns (the last phase via [-1:], -o wide).
    (row,) = _table(kubectl("get", "taskactions", "-o", "wide").stdout, [*COLUMNS, *WIDE_COLUMNS])
    assert row["RUN"] == "r1" and row["ACTION"] == "a1" and row["PARENT"] == ""
    cells = (row["PHASE"], row["PROJECT"], row["DOMAIN"], row["CACHE"])
    assert cells == ("Executing", "p", "d", "")
    wide = kubectl("get", "ta", "a1", "-o", "custom-columns=N:.metadata.name,R:.spec.runName")
    assert wide.stdout.split() == ["N", "R", "a1", "r1"]
    assert kubectl("get", "ta", "-l", "flyte.org/run=r1", "-o", "name").stdout.strip() == (
        "taskaction.flyte.org/a1"
    )
    obj = json.loads(kubectl("get", "taskaction", "a1", "-o", "json").stdout)
    assert obj["metadata"]["uid"] and obj["spec"]["runName"] == "r1"

    kubectl("patch", "taskaction", "a1", "--type=merge", "-p", '{"spec":{"shortName":"q"}}')
    failed = kubectl("patch", "taskaction", "a1", "-p", '{"spec":{"queue":"z"}}', check=False)
    assert failed.returncode != 0  # strategic merge patch on a CR: 415

    out = kubectl("delete", "taskaction", "a1").stdout
    assert 'taskaction.flyte.org "a1" deleted' in out
    missing = kubectl("get", "taskaction", "a1", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_delete_waits_for_finalizers(kubectl, kube_emulator, custom_api, taskaction):
    body = taskaction("held", finalizers=["flyte.org/keep"])
    custom_api.create_namespaced_custom_object("flyte.org", "v1", NS, "taskactions", body)
    proc = kubectl.popen("delete", "taskaction", "held", "--timeout=20s")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        obj = custom_api.get_namespaced_custom_object("flyte.org", "v1", NS, "taskactions", "held")
        if obj["metadata"].get("deletionTimestamp"):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting on the watch (field selector metadata.name)
    custom_api.patch_namespaced_custom_object(
        "flyte.org", "v1", NS, "taskactions", "held", {"metadata": {"finalizers": None}}
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert 'taskaction.flyte.org "held" deleted' in out


def test_kubectl_get_watch(kubectl, kube_emulator, custom_api, taskaction):
    custom_api.create_namespaced_custom_object(
        "flyte.org", "v1", NS, "taskactions", taskaction("first")
    )
    proc = kubectl.popen("get", "taskactions", "-w", "-o", "name")
    try:
        assert _line(proc).strip() == "taskaction.flyte.org/first"
        custom_api.create_namespaced_custom_object(
            "flyte.org", "v1", NS, "taskactions", taskaction("second")
        )
        assert _line(proc).strip() == "taskaction.flyte.org/second"
        kube_emulator.close_watches()  # Kubectl exits 0 when the server ends the stream
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    watches = [r[1] for r in kube_emulator.requests if "watch=true" in r[1]]
    assert watches and "resourceVersion=" in watches[0]


def test_kubectl_discovery_and_namespaces(kubectl, kube_emulator, tmp_path):
    resources = kubectl("api-resources", "--api-group=flyte.org", "-o", "wide").stdout
    assert "taskactions" in resources and "TaskAction" in resources and "ta" in resources.split()
    versions = kubectl("api-versions").stdout.split()
    assert "flyte.org/v1" in versions and "v1" in versions
    ns = tmp_path / "ns.yaml"
    ns.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: made-by-kubectl\n")
    kubectl("apply", "-f", str(ns))
    assert "namespace/made-by-kubectl" in kubectl("get", "ns", "-o", "name").stdout
    # `kubectl create namespace` sends protobuf, which the emulator refuses with 415.
    refused = kubectl("create", "namespace", "other", check=False)
    assert refused.returncode != 0 and "does not decode" in refused.stderr
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["minor"] == kube_emulator.server_version[1]


def test_kubectl_strict_field_validation(kubectl, tmp_path):
    path = _manifest(tmp_path, "a1", bogus="x")
    failed = kubectl("apply", "-f", str(path), check=False)
    assert failed.returncode != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in failed.stderr
    out = kubectl("apply", "--validate=false", "-f", str(path)).stdout
    assert "created" in out  # fieldValidation=Ignore: pruned silently


def test_kubectl_get_watch_table_output(kubectl, kube_emulator, custom_api, taskaction):
    custom_api.create_namespaced_custom_object(
        "flyte.org", "v1", NS, "taskactions", taskaction("first")
    )
    proc = kubectl.popen("get", "taskactions", "--watch")
    try:
        assert _line(proc).split() == COLUMNS
        # Missing values are empty cells, so only the leading ones line up after split().
        assert _line(proc).split()[:3] == ["first", "r", "first"]
        custom_api.patch_namespaced_custom_object_status(
            "flyte.org",
            "v1",
            NS,
            "taskactions",
            "first",
            {"status": {"conditions": _conditions("Succeeded", "Completed"), "attempts": 1}},
        )
        row = _line(proc).split()
        assert row[0] == "first" and row[-3:-1] == ["Completed", "1"]
        kube_emulator.close_watches()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _versioned_kubectls() -> list[str]:
    found = shutil.which("kubectl")
    if not found:
        return []
    folder = Path(os.path.realpath(found)).parent
    return sorted(str(p) for p in folder.glob("kubectl.1.*") if p.name in _OTHER_VERSIONS)


_OTHER_VERSIONS = {"kubectl.1.27", "kubectl.1.33"}


@pytest.mark.parametrize("binary", _versioned_kubectls(), ids=lambda p: Path(p).name)
def test_other_kubectl_versions(binary, kube_emulator, tmp_path):
    # Older and newer clients discover, apply, list and delete (with the deletion wait).
    env = {
        **os.environ,
        "KUBECONFIG": str(kube_emulator.write_kubeconfig(tmp_path / "kc", namespace=NS)),
    }

    def run(*args: str) -> str:
        proc = subprocess.run(
            [binary, f"--cache-dir={tmp_path / 'cache'}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    path = _manifest(tmp_path, "v1x")
    # kubectl 1.27 learns from /openapi/v2 (protobuf) that the server validates fields.
    assert "created" in run("apply", "-f", str(path))
    assert "unchanged" in run("apply", "-f", str(path))
    assert run("get", "taskactions", "-o", "name").split() == ["taskaction.flyte.org/v1x"]
    assert 'taskaction.flyte.org "v1x" deleted' in run("delete", "taskaction", "v1x")


def test_kubectl_printer_columns(kubectl, kube_emulator, custom_api, taskaction):
    def create(name: str, **spec: str) -> None:
        custom_api.create_namespaced_custom_object(
            "flyte.org", "v1", NS, "taskactions", taskaction(name, **spec)
        )

    def set_status(name: str, status: dict) -> None:
        custom_api.patch_namespaced_custom_object_status(
            "flyte.org", "v1", NS, "taskactions", name, {"status": status}
        )

    create("root", taskType="python")
    create("child", parentActionName="root", actionType="condition")
    create("aborted", parentActionName="root", taskType="spark")
    set_status(
        "root",
        {
            "conditions": _conditions("Progressing", "Executing"),
            "phaseHistory": _history("Queued", "Executing"),
            "attempts": 2,
            "cacheStatus": 1,
        },
    )
    # Aborted while running: the phase history still ends in RUNNING; the Progressing
    # condition's reason says Aborted.
    set_status(
        "aborted",
        {
            "conditions": _conditions("Failed", "Aborted"),
            "phaseHistory": _history("Queued", "Executing"),
            "attempts": 1,
        },
    )
    rows = _table(kubectl("get", "taskactions").stdout, COLUMNS)
    assert [{k: v for k, v in row.items() if k != "AGE"} for row in rows] == [
        {
            "NAME": "aborted",
            "RUN": "r",
            "ACTION": "aborted",
            "PARENT": "root",
            "TYPE": "task",
            "TASKTYPE": "spark",
            "STATUS": "Aborted",
            "ATTEMPTS": "1",
        },
        {
            "NAME": "child",
            "RUN": "r",
            "ACTION": "child",
            "PARENT": "root",
            "TYPE": "condition",
            "TASKTYPE": "",
            "STATUS": "",
            "ATTEMPTS": "",
        },
        {
            "NAME": "root",
            "RUN": "r",
            "ACTION": "root",
            "PARENT": "",
            "TYPE": "task",
            "TASKTYPE": "python",
            "STATUS": "Executing",
            "ATTEMPTS": "2",
        },
    ]
    assert all(re.fullmatch(r"\d+s", row["AGE"]) for row in rows)
    wide = _table(kubectl("get", "ta", "-o", "wide").stdout, [*COLUMNS, *WIDE_COLUMNS])
    assert {row["NAME"]: [row[c] for c in WIDE_COLUMNS] for row in wide} == {
        "aborted": ["Executing", "p", "d", "", "False", "", "True"],
        "child": ["", "p", "d", "", "", "", ""],
        "root": ["Executing", "p", "d", "1", "True", "", ""],
    }


def test_server_table_cells_are_typed(kube_raw, custom_api, taskaction):
    custom_api.create_namespaced_custom_object(
        "flyte.org", "v1", NS, "taskactions", taskaction("t1", taskType="python")
    )
    custom_api.patch_namespaced_custom_object_status(
        "flyte.org",
        "v1",
        NS,
        "taskactions",
        "t1",
        {"status": {"conditions": _conditions("Progressing", "Queued"), "attempts": 3}},
    )
    status, headers, body = kube_raw(
        "GET",
        f"/apis/flyte.org/v1/namespaces/{NS}/taskactions",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json;as=Table")
    table = json.loads(body)
    definitions = table["columnDefinitions"]
    assert [c["name"] for c in definitions] == [
        "Name",
        "Run",
        "Action",
        "Parent",
        "Type",
        "TaskType",
        "Status",
        "Attempts",
        "Age",
        "Phase",
        "Project",
        "Domain",
        "Cache",
        "Progressing",
        "Succeeded",
        "Failed",
    ]
    assert [c["priority"] for c in definitions] == [0] * 9 + [1] * 7
    assert definitions[8]["description"] == (
        "Custom resource definition column (in JSONPath format): .metadata.creationTimestamp"
    )
    (row,) = table["rows"]
    cells = dict(zip([c["name"] for c in definitions], row["cells"], strict=True))
    assert cells["Attempts"] == 3  # an integer column: a JSON number
    assert cells["Status"] == "Queued" and cells["Parent"] is None and cells["Phase"] is None
    assert row["object"]["kind"] == "PartialObjectMetadata"


def _wait_for_watch(emulator, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any("watch=true" in r[1] and r[2] == 200 for r in list(emulator.requests)):
        assert time.monotonic() < deadline, "kubectl did not start watching"
        time.sleep(0.02)


def test_kubectl_get_watch_follows_status(kubectl, kube_emulator, custom_api, taskaction):
    proc = kubectl.popen("get", "taskactions", "--watch")
    try:
        _wait_for_watch(kube_emulator)  # so the create arrives as a watch event
        custom_api.create_namespaced_custom_object(
            "flyte.org",
            "v1",
            NS,
            "taskactions",
            taskaction("w1", parentActionName="p0", taskType="python"),
        )
        assert _line(proc).split() == COLUMNS  # kubectl prints the header with the first row
        # Created without a status: Status and Attempts are empty cells.
        assert _line(proc).split()[:6] == ["w1", "r", "w1", "p0", "task", "python"]
        for reason, true_type, attempts in (
            ("Queued", "Progressing", 0),
            ("Executing", "Progressing", 1),
            ("Aborted", "Failed", 1),
        ):
            custom_api.patch_namespaced_custom_object_status(
                "flyte.org",
                "v1",
                NS,
                "taskactions",
                "w1",
                {"status": {"conditions": _conditions(true_type, reason), "attempts": attempts}},
            )
            row = _line(proc).split()
            assert row[:8] == ["w1", "r", "w1", "p0", "task", "python", reason, str(attempts)]
        kube_emulator.close_watches()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
