"""Deployment manifests in k8s/: schema-valid for Kubernetes 1.32, consistent with each
other and with the service, and the CRD served by the API emulator (and kubectl)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kube_emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBE_VERSION = "1.32.0"
G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _by_kind() -> dict[str, dict]:
    out = {}
    for path in _manifest_files():
        for doc in _docs(path):
            out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes_1_32(path):
    for doc in _docs(path):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files())
    assert kustomization["namespace"] == "flyte"


@pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl not installed (the machine image ships it; under CI its absence fails)",
)
def test_kustomize_build_places_everything_in_flyte():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "CustomResourceDefinition",  # TaskAction
            "CustomResourceDefinition",  # TraceAction
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == "flyte", doc["kind"]


def test_crd_shape():
    crd = _docs(K8S / "crd.yaml")[0]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "taskactions.flyte.org"
    assert spec["group"] == "flyte.org" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "TaskAction",
        "listKind": "TaskActionList",
        "plural": "taskactions",
        "singular": "taskaction",
        "shortNames": ["ta"],
        "categories": ["flyte"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Run": ".spec.runName",
        "Action": ".spec.actionName",
        "Parent": ".spec.parentActionName",
        "Type": ".spec.actionType",
        "TaskType": ".spec.taskType",
        "Status": '.status.conditions[?(@.type=="Progressing")].reason',
        "Attempts": ".status.attempts",
        "Age": ".metadata.creationTimestamp",
        # -o wide
        "Phase": ".status.phaseHistory[-1:].phase",
        "Project": ".spec.project",
        "Domain": ".spec.domain",
        "Cache": ".status.cacheStatus",
        "Progressing": '.status.conditions[?(@.type=="Progressing")].status',
        "Succeeded": '.status.conditions[?(@.type=="Succeeded")].status',
        "Failed": '.status.conditions[?(@.type=="Failed")].status',
    }
    schema = version["schema"]["openAPIV3Schema"]
    spec_props = schema["properties"]["spec"]["properties"]
    for field in (
        "project",
        "domain",
        "runName",
        "actionName",
        "parentActionName",
        "actionType",
        "inputUri",
        "runOutputBase",
        "group",
        "taskType",
        "shortName",
        "cacheKey",
        "taskTemplate",
        "conditionSpec",
        "envVars",
        "interruptible",
    ):
        assert field in spec_props, field
    status_props = schema["properties"]["status"]["properties"]
    # Flyte's executor's schema, field for field: nothing else in spec or status.
    assert sorted(spec_props) == sorted(EXECUTOR_SPEC)
    assert sorted(schema["properties"]["status"]["properties"]) == sorted(EXECUTOR_STATUS)
    assert sorted(schema["properties"]["spec"]["required"]) == [
        "actionName",
        "domain",
        "project",
        "runName",
    ]
    assert spec_props["actionType"]["enum"] == ["task", "condition"]
    for field, (low, high) in {
        "runName": (1, 30),
        "actionName": (1, 30),
        "parentActionName": (1, 30),
        "project": (1, 63),
        "domain": (1, 63),
    }.items():
        assert (spec_props[field]["minLength"], spec_props[field]["maxLength"]) == (low, high)
    status_props = schema["properties"]["status"]["properties"]
    assert status_props["cacheStatus"]["type"] == "integer"
    assert status_props["signalValue"]["format"] == "byte"
    # Structural, and nothing unknown is preserved: the API server prunes it.
    assert _preserve_paths(schema) == []


EXECUTOR_SPEC = (
    "runName",
    "project",
    "domain",
    "actionName",
    "parentActionName",
    "actionType",
    "conditionSpec",
    "inputUri",
    "runOutputBase",
    "cacheKey",
    "taskType",
    "shortName",
    "taskTemplate",
    "envVars",
    "interruptible",
    "group",
)
EXECUTOR_STATUS = (
    "stateJson",
    "pluginState",
    "pluginStateVersion",
    "pluginPhase",
    "pluginPhaseVersion",
    "attempts",
    "systemFailures",
    "cacheStatus",
    "conditions",
    "phaseHistory",
    "errorState",
    "signalValue",
    "signalledBy",
    "signalledAt",
)


def _preserve_paths(schema: dict, path: str = "") -> list[str]:
    found = [path] if schema.get("x-kubernetes-preserve-unknown-fields") else []
    for key, sub in (schema.get("properties") or {}).items():
        found += _preserve_paths(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("items"), dict):
        found += _preserve_paths(schema["items"], path + "[]")
    return found


def _full_taskaction() -> dict:
    """Every spec and status field of the executor's TaskAction."""
    return {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": {"name": "r1-a0-0123456789ab", "labels": {"flyte.org/run": "r1"}},
        "spec": {
            "project": "p",
            "domain": "d",
            "runName": "r1",
            "actionName": "a0",
            "parentActionName": "root",
            "actionType": "task",
            "inputUri": "s3://b/in",
            "runOutputBase": "s3://b/out",
            "group": "g",
            "taskType": "python",
            "shortName": "t",
            "cacheKey": "k",
            "taskTemplate": "AAEC",
            "conditionSpec": "AA==",
            "envVars": {"A": "1"},
            "interruptible": True,
        },
        "status": {
            "stateJson": "{}",
            "pluginState": "AAEC",
            "pluginStateVersion": 1,
            "pluginPhase": "Running",
            "pluginPhaseVersion": 2,
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "Completed",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
            "phaseHistory": [{"phase": "Queued", "occurredAt": "2026-01-01T00:00:00Z"}],
            "attempts": 2,
            "systemFailures": 0,
            "cacheStatus": 1,
            "errorState": {"code": "E1", "kind": "USER", "message": "boom"},
            "signalValue": "AA==",
            "signalledBy": "user",
            "signalledAt": "2026-01-01T00:00:00Z",
        },
    }


def test_crd_served_by_emulator_keeps_every_field():
    with Emulator(crds=[K8S / "crd.yaml"], namespaces=[NS]) as emu:
        api = _custom_api(emu)
        body = _full_taskaction()
        created = api.create_namespaced_custom_object(G, V, NS, P, body)
        assert created["spec"] == body["spec"]  # nothing pruned
        created["status"] = body["status"]
        stored = api.replace_namespaced_custom_object_status(
            G, V, NS, P, created["metadata"]["name"], created
        )
        assert stored["status"] == body["status"]


def _custom_api(emu: Emulator):
    from kubernetes import client

    return client.CustomObjectsApi(emu.api_client())


@pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl not installed (the machine image ships it; under CI its absence fails)",
)
def test_kubectl_apply_crd_to_emulator(tmp_path):
    # Plain `kubectl apply` (default validation): the emulator's /openapi/v3 tells kubectl
    # to validate server-side with fieldValidation=Strict.
    with Emulator(namespaces=[NS]) as emu:
        env = {**os.environ, "KUBECONFIG": str(emu.write_kubeconfig(tmp_path / "kc"))}
        cmd = [
            "kubectl",
            f"--cache-dir={tmp_path / 'cache'}",
            "apply",
            "-f",
            str(K8S / "crd.yaml"),
        ]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "customresourcedefinition.apiextensions.k8s.io/taskactions.flyte.org created" in (
            first.stdout
        )
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "unchanged" in again.stdout
        crd = emu.store.get(
            emu.registry.get("apiextensions.k8s.io", "customresourcedefinitions"),
            None,
            "taskactions.flyte.org",
        )
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}
        api = _custom_api(emu)
        api.create_namespaced_custom_object(G, V, NS, P, _full_taskaction())
        assert len(api.list_namespaced_custom_object(G, V, NS, P)["items"]) == 1


def test_crd_posted_through_the_api_is_served_and_deletion_removes_instances():
    from kubernetes import client

    with Emulator(namespaces=[NS]) as emu:
        api_client = emu.api_client()
        ext = client.ApiextensionsV1Api(api_client)
        body = _docs(K8S / "crd.yaml")[0]
        ext.create_custom_resource_definition(body)
        api = client.CustomObjectsApi(api_client)
        api.create_namespaced_custom_object(G, V, NS, P, _full_taskaction())
        resources = api.get_api_resources(G, V)
        assert [r.name for r in resources.resources] == ["taskactions", "taskactions/status"]
        ext.delete_custom_resource_definition("taskactions.flyte.org")
        with pytest.raises(client.ApiException) as err:
            api.list_namespaced_custom_object(G, V, NS, P)
        assert err.value.status == 404


def test_rbac_is_least_privilege():
    kinds = _by_kind()
    rules = kinds["Role"]["rules"]
    assert rules == [
        {
            "apiGroups": ["flyte.org"],
            "resources": ["taskactions"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
        {
            "apiGroups": ["flyte.org"],
            "resources": ["taskactions/status"],
            "verbs": ["get", "update", "patch"],
        },
        {
            "apiGroups": ["flyte.org"],
            "resources": ["actiontraces"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
    ]
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": kinds["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": kinds["ServiceAccount"]["metadata"]["name"],
            "namespace": "flyte",
        }
    ]


def test_deployment_hardening_probes_and_wiring():
    kinds = _by_kind()
    deploy = kinds["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] >= 10
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["actions-service"]
    assert container["args"][:3] == ["serve", "--store", "kubernetes"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert container["ports"] == [{"name": "http", "containerPort": 8091, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    service = kinds["Service"]
    assert service["spec"]["selector"] == selector
    (port,) = service["spec"]["ports"]
    assert port["appProtocol"] == "kubernetes.io/h2c" and port["targetPort"] == "http"
    # The config file the container reads is the ConfigMap's key.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    cm_name = volumes["config"]["configMap"]["name"]
    assert cm_name == kinds["ConfigMap"]["metadata"]["name"]
    assert config_path == f"{mounts['config']}/config.yaml"


def test_configmap_holds_the_service_keys():
    data = yaml.safe_load(_by_kind()["ConfigMap"]["data"]["config.yaml"])
    actions = data["actions"]
    assert actions["kubernetes"]["namespace"] == "flyte"
    assert actions["watchWorkers"] == 10 and actions["watchBufferSize"] == 100
    assert actions["server"] == {"host": "0.0.0.0", "port": 8091}
    from actions import config

    loaded = config.from_mapping(data)
    assert (loaded.namespace, loaded.port, loaded.host) == ("flyte", 8091, "0.0.0.0")
