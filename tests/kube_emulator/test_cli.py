"""``kube-emulator`` as a local cluster: start-up line, kubeconfig, CRD and namespace
installed by default, request logging, one-line start-up failures, and the repository's
``kubectl apply -k k8s/`` against it with the real kubectl (every client version the machine
ships)."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kube_emulator.__main__ import default_kubeconfig_path, find_default_crd

ROOT = Path(__file__).resolve().parents[2]
START_LINE = re.compile(
    r"^kube-emulator serving (?P<url>http://127\.0\.0\.1:\d+) "
    r"\(kubeconfig (?P<kubeconfig>\S+), namespace (?P<namespace>\S+)\)$"
)
# Every object k8s/ holds, as `kubectl apply` names them.
K8S_OBJECTS = [
    "namespace/flyte",
    "customresourcedefinition.apiextensions.k8s.io/taskactions.flyte.org",
    "customresourcedefinition.apiextensions.k8s.io/actiontraces.flyte.org",
    "serviceaccount/actions-service",
    "role.rbac.authorization.k8s.io/actions-service",
    "rolebinding.rbac.authorization.k8s.io/actions-service",
    "configmap/actions-service-config",
    "service/actions-service",
    "deployment.apps/actions-service",
]

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl not installed (the machine image ships it; under CI its absence fails)",
)


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    kubeconfig: Path
    namespace: str


def _read_line(proc: subprocess.Popen[str], stream: str = "stdout", timeout: float = 15) -> str:
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, f"no line on {stream} within {timeout}s"
    return pipe.readline()


def _spawn(*args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kube_emulator", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the exit status and what is left on stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []

    def run(*args: str, cwd: Path = ROOT) -> Running:
        proc = _spawn("--kubeconfig", str(tmp_path / "kubeconfig"), *args, cwd=cwd)
        started.append(proc)
        line = _read_line(proc)
        match = START_LINE.match(line.rstrip("\n"))
        assert match, f"start line {line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        return Running(proc, match["url"], Path(match["kubeconfig"]), match["namespace"])

    yield run
    for proc in started:
        code, err = _stop(proc)
        assert code == 0, err


def _kubectl(
    running: Running, tmp_path: Path, *args: str, binary: str = "kubectl"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(running.kubeconfig)}
    return subprocess.run(
        [binary, f"--cache-dir={tmp_path / 'cache' / Path(binary).name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- start-up: kubeconfig, CRD, namespaces -------------------------------------------------


def test_start_line_and_kubeconfig(start, tmp_path):
    running = start()
    assert running.kubeconfig == tmp_path / "kubeconfig" and running.namespace == "flyte"
    config = yaml.safe_load(running.kubeconfig.read_text())
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]
    assert context["context"]["namespace"] == "flyte"
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"] == running.url
    assert running.kubeconfig.stat().st_mode & 0o077 == 0  # owner-only


def test_context_namespace_option(start):
    running = start("--context-namespace", "team-a", "--namespace", "team-a")
    config = yaml.safe_load(running.kubeconfig.read_text())
    assert config["contexts"][0]["context"]["namespace"] == "team-a"
    assert running.namespace == "team-a"


def test_default_paths():
    assert default_kubeconfig_path() == Path.home() / ".kube" / "kube-emulator.yaml"
    assert find_default_crd(ROOT) == ROOT / "k8s" / "crd.yaml"
    # Outside a checkout, the checkout this package lives in still provides it.
    assert find_default_crd(Path("/")) == ROOT / "k8s" / "crd.yaml"


@needs_kubectl
def test_default_install_serves_crd_and_flyte_namespace(start, tmp_path):
    running = start(cwd=tmp_path)  # the CRD is found relative to the checkout
    namespaces = _kubectl(running, tmp_path, "get", "namespaces", "-o", "name")
    assert namespaces.stdout.split() == ["namespace/default", "namespace/flyte"]
    listing = _kubectl(running, tmp_path, "get", "taskactions")
    assert listing.returncode == 0, listing.stderr
    assert "No resources found in flyte namespace." in listing.stderr


@needs_kubectl
def test_opt_outs_leave_an_empty_cluster(start, tmp_path):
    running = start("--no-crd", "--no-namespace")
    namespaces = _kubectl(running, tmp_path, "get", "namespaces", "-o", "name")
    assert namespaces.stdout.split() == ["namespace/default"]
    missing = _kubectl(running, tmp_path, "get", "taskactions")
    assert missing.returncode != 0
    assert 'the server doesn\'t have a resource type "taskactions"' in missing.stderr


# --- kubectl apply -k k8s/ -------------------------------------------------------------------


def _applied(output: str) -> dict[str, str]:
    """``kubectl apply`` output lines ``kind/name verb`` as {kind/name: verb}."""
    return dict(line.split(" ", 1) for line in output.splitlines() if line.strip())


@needs_kubectl
def test_apply_kustomization_to_a_fresh_emulator(start, tmp_path):
    running = start("--no-crd", "--no-namespace")
    first = _kubectl(running, tmp_path, "apply", "-k", "k8s/")
    assert first.returncode == 0, first.stderr
    assert _applied(first.stdout) == {name: "created" for name in K8S_OBJECTS}
    again = _kubectl(running, tmp_path, "apply", "-k", "k8s/")
    assert again.returncode == 0, again.stderr
    assert _applied(again.stdout) == {name: "unchanged" for name in K8S_OBJECTS}
    names = _kubectl(
        running,
        tmp_path,
        "get",
        "serviceaccount,role,rolebinding,configmap,service,deployment",
        "-n",
        "flyte",
        "-o",
        "name",
    ).stdout.split()
    assert names == [
        "serviceaccount/actions-service",
        "role.rbac.authorization.k8s.io/actions-service",
        "rolebinding.rbac.authorization.k8s.io/actions-service",
        "configmap/actions-service-config",
        "service/actions-service",
        "deployment.apps/actions-service",
    ]
    # The stored deployment is the manifest (kustomize set its namespace and image tag).
    deployment = yaml.safe_load(
        _kubectl(running, tmp_path, "get", "deployment", "actions-service", "-o", "yaml").stdout
    )
    assert deployment["metadata"]["namespace"] == "flyte"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "flyte-actions-service:0.1.0"
    # Built-in kinds print the default table: the creation time itself.
    listing = _kubectl(running, tmp_path, "get", "configmaps", "-n", "flyte").stdout.splitlines()
    assert listing[0].split() == ["NAME", "CREATED", "AT"]
    assert re.fullmatch(r"actions-service-config\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listing[1])


@needs_kubectl
def test_apply_kustomization_over_the_default_install(start, tmp_path):
    # The CRD and namespace the emulator installed carry kubectl's last-applied annotation,
    # so applying the manifests patches them without a missing-annotation warning.
    running = start()
    result = _kubectl(running, tmp_path, "apply", "-k", "k8s/")
    assert result.returncode == 0, result.stderr
    assert "last-applied-configuration" not in result.stderr
    applied = _applied(result.stdout)
    assert set(applied) == set(K8S_OBJECTS)
    assert applied["namespace/flyte"] == "configured"  # the manifest adds labels
    assert applied["configmap/actions-service-config"] == "created"
    unvalidated = _kubectl(running, tmp_path, "apply", "--validate=false", "-k", "k8s/")
    assert unvalidated.returncode == 0, unvalidated.stderr
    assert set(_applied(unvalidated.stdout).values()) == {"unchanged"}


def _versioned_kubectls() -> list[str]:
    found = shutil.which("kubectl")
    if not found:
        return []
    folder = Path(os.path.realpath(found)).parent
    return sorted(str(p) for p in folder.glob("kubectl.1.*"))


@pytest.mark.parametrize("binary", _versioned_kubectls(), ids=lambda p: Path(p).name)
def test_apply_kustomization_with_every_kubectl(binary, start, tmp_path):
    # 1.27 and 1.28 check fieldValidation support in /openapi/v2 (protobuf), later ones in
    # /openapi/v3; with validation on and off, every object is created.
    running = start("--no-crd", "--no-namespace")
    first = _kubectl(running, tmp_path, "apply", "-k", "k8s/", binary=binary)
    assert first.returncode == 0, first.stderr
    assert _applied(first.stdout) == {name: "created" for name in K8S_OBJECTS}
    again = _kubectl(running, tmp_path, "apply", "--validate=false", "-k", "k8s/", binary=binary)
    assert again.returncode == 0, again.stderr
    assert _applied(again.stdout) == {name: "unchanged" for name in K8S_OBJECTS}
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text(
        "apiVersion: flyte.org/v1\nkind: TaskAction\nmetadata: {name: b1}\n"
        "spec: {project: p, domain: d, runName: r, actionName: b1, actionType: task, x: 1}\n"
    )
    refused = _kubectl(running, tmp_path, "apply", "-f", str(bogus), binary=binary)
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.x"' in refused.stderr


# --- logging and failures ---------------------------------------------------------------------


def test_debug_log_lines(tmp_path):
    proc = _spawn("--log-level", "DEBUG", "--kubeconfig", str(tmp_path / "kc"))
    try:
        match = START_LINE.match(_read_line(proc).rstrip("\n"))
        assert match
        host, port = match["url"].removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /api/v1/namespaces/flyte HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        line = _read_line(proc, "stderr")
        assert "DEBUG kube_emulator.requests: GET /api/v1/namespaces/flyte -> 200 in" in line
    finally:
        assert _stop(proc)[0] == 0


def test_quiet_by_default(tmp_path):
    proc = _spawn("--kubeconfig", str(tmp_path / "kc"))
    try:
        match = START_LINE.match(_read_line(proc).rstrip("\n"))
        assert match
        host, port = match["url"].removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        code, err = _stop(proc)
    assert code == 0 and err == ""


def _fails(*args: str, cwd: Path = ROOT) -> str:
    proc = _spawn(*args, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kube-emulator: "), err
    return lines[0]


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _fails("--port", str(port), "--kubeconfig", str(tmp_path / "kc"))
    assert line == f"kube-emulator: cannot listen on 127.0.0.1:{port}: address already in use"
    assert not (tmp_path / "kc").exists()


def test_crd_problems_are_one_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    line = _fails("--crd", str(missing), "--kubeconfig", str(tmp_path / "kc"))
    assert line == f"kube-emulator: cannot read CRD {missing}: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    line = _fails("--crd", str(broken), "--kubeconfig", str(tmp_path / "kc"))
    assert line.startswith(f"kube-emulator: CRD {broken} is not valid YAML: ")
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: ConfigMap\n")
    line = _fails("--crd", str(empty), "--kubeconfig", str(tmp_path / "kc"))
    assert line == f"kube-emulator: {empty} holds no CustomResourceDefinition"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "metadata: {name: wrong.example.com}\n"
        "spec: {group: example.com, names: {plural: things, kind: Thing}, scope: Namespaced,"
        " versions: [{name: v1, served: true, storage: true}]}\n"
    )
    line = _fails("--crd", str(bad), "--kubeconfig", str(tmp_path / "kc"))
    assert line.startswith(f"kube-emulator: CRD {bad} refused: ")
    assert "must be spec.names.plural" in line


def test_no_default_crd_outside_a_checkout_is_one_line(tmp_path, monkeypatch, capsys):
    from kube_emulator import __main__ as cli

    monkeypatch.setattr(cli, "find_default_crd", lambda cwd=None: None)
    assert cli.main(["--kubeconfig", str(tmp_path / "kc")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "kube-emulator: no k8s/crd.yaml in the working directory or the checkout; "
        "pass --crd PATH or --no-crd\n"
    )


def test_unwritable_kubeconfig_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _fails("--kubeconfig", str(blocker / "kubeconfig"))
    assert line.startswith(f"kube-emulator: cannot write kubeconfig {blocker / 'kubeconfig'}: ")


def test_sigterm_stops_cleanly(tmp_path):
    proc = _spawn("--kubeconfig", str(tmp_path / "kc"))
    assert START_LINE.match(_read_line(proc).rstrip("\n"))
    started = time.monotonic()
    assert _stop(proc) == (0, "")
    assert time.monotonic() - started < 10


@needs_kubectl
def test_apply_changed_manifests_merges_lists(start, tmp_path):
    # A second `kubectl apply -k` with a new image tag and one env value changed: kubectl
    # sends strategic merge patches; containers and env merge by name, nothing else is lost.
    running = start("--no-crd", "--no-namespace")
    assert _kubectl(running, tmp_path, "apply", "-k", "k8s/").returncode == 0
    changed = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", changed)
    kustomization = changed / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("newTag: 0.1.0", "newTag: 0.2.0"))
    deployment = changed / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("value: /tmp/data", "value: /tmp/d2"))
    result = _kubectl(running, tmp_path, "apply", "-k", str(changed))
    assert result.returncode == 0, result.stderr
    applied = _applied(result.stdout)
    assert applied.pop("deployment.apps/actions-service") == "configured"
    assert set(applied.values()) == {"unchanged"}
    again = _kubectl(running, tmp_path, "apply", "-k", str(changed))
    assert set(_applied(again.stdout).values()) == {"unchanged"}  # converged
    stored = yaml.safe_load(
        _kubectl(
            running, tmp_path, "get", "deploy", "actions-service", "-n", "flyte", "-o", "yaml"
        ).stdout
    )
    (container,) = stored["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "flyte-actions-service:0.2.0"
    assert [e["name"] for e in container["env"]] == ["POD_NAMESPACE", "XDG_DATA_HOME"]
    assert container["env"][1]["value"] == "/tmp/d2"
    assert container["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [m["name"] for m in container["volumeMounts"]] == ["config", "tmp"]
    # `kubectl patch` (strategic by default) merges containers by name too.
    patched = _kubectl(
        running,
        tmp_path,
        "patch",
        "deploy",
        "actions-service",
        "-n",
        "flyte",
        "-p",
        '{"spec":{"template":{"spec":{"containers":[{"name":"actions-service","image":"x:1"}]}}}}',
    )
    assert patched.returncode == 0, patched.stderr
    stored = yaml.safe_load(
        _kubectl(
            running, tmp_path, "get", "deploy", "actions-service", "-n", "flyte", "-o", "yaml"
        ).stdout
    )
    (container,) = stored["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "x:1" and container["command"] == ["actions-service"]


@needs_kubectl
def test_delete_kustomization(start, tmp_path):
    running = start()
    assert _kubectl(running, tmp_path, "apply", "-k", "k8s/").returncode == 0
    deleted = _kubectl(running, tmp_path, "delete", "-k", "k8s/", "--ignore-not-found")
    assert deleted.returncode == 0, deleted.stderr
    left = _kubectl(running, tmp_path, "get", "namespaces", "-o", "name").stdout.split()
    assert left == ["namespace/default"]
    assert running.proc.poll() is None
