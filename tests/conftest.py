"""Shared test set-up: the helpers in tests/support and the generated test-service code on
the import path, and the emulator fixtures."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests" / "support" / "gen", ROOT / "tests" / "support"):
    sys.path.insert(0, str(_path))

# Subprocess test servers, TLS files, schemas and client stubs (tests/support/servers.py).
pytest_plugins = ["servers"]


# --- Kubernetes API emulator (emulator/, a distribution of its own) -----------------------

import pytest  # noqa: E402

CRD_PATH = ROOT / "k8s" / "crd.yaml"


@pytest.fixture
def kube_emulator():
    """A started emulator serving the TaskAction CRD, with namespaces default and flyte.

    Short waits keep the too-large-resourceVersion paths fast; stopped (and its threads
    joined) after the test.
    """
    from kube_emulator import Emulator

    emu = Emulator(
        crds=[CRD_PATH],
        namespaces=["default", "flyte"],
        too_large_rv_wait=0.3,
    )
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def kube_api_client(kube_emulator):
    """A ``kubernetes.client.ApiClient`` pointed at ``kube_emulator``."""
    client = kube_emulator.api_client()
    yield client
    client.close()


@pytest.fixture
def custom_api(kube_api_client):
    from kubernetes import client

    return client.CustomObjectsApi(kube_api_client)


@pytest.fixture
def core_api(kube_api_client):
    from kubernetes import client

    return client.CoreV1Api(kube_api_client)


@pytest.fixture
def kube_raw(kube_emulator):
    """``raw(method, path, body=None, headers=None) -> (status, headers, bytes)`` over one
    persistent ``http.client`` connection, for checks below the client library."""
    import http.client
    import json as _json

    conn = http.client.HTTPConnection(kube_emulator.host, kube_emulator.port, timeout=10)

    def raw(method, path, body=None, headers=None):
        data = body if isinstance(body, bytes | None) else _json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()

    yield raw
    conn.close()


def make_taskaction(name, *, labels=None, owners=None, finalizers=None, **spec):
    """A minimal valid TaskAction body for emulator tests."""
    body = {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": {"name": name},
        "spec": {
            "project": "p",
            "domain": "d",
            "runName": "r",
            "actionName": name,
            "actionType": "task",
            **spec,
        },
    }
    if labels:
        body["metadata"]["labels"] = labels
    if owners:
        body["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "flyte.org/v1",
                "kind": "TaskAction",
                "name": o["metadata"]["name"],
                "uid": o["metadata"]["uid"],
                "blockOwnerDeletion": True,
            }
            for o in owners
        ]
    if finalizers:
        body["metadata"]["finalizers"] = finalizers
    return body


@pytest.fixture
def taskaction():
    """The ``make_taskaction`` body factory."""
    return make_taskaction
