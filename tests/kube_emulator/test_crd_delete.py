"""Deleting a CustomResourceDefinition while its kind is in use, as a real API server does
it: every object goes (DELETED events), open watches of the kind end cleanly, and the
kind's endpoints answer Go's plain ``404 page not found`` until the CRD is created again."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import yaml
from conftest import CRD_PATH
from kube_emulator import Emulator
from kubernetes import client

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
COLL = f"/apis/{G}/{V}/namespaces/{NS}/{P}"
CRD_NAME = f"{P}.{G}"


def _watch_in_thread(emu: Emulator, since: int) -> tuple[threading.Thread, list[Any]]:
    """Read a watch (server timeout 30 s) until the server ends it; the list gets every
    event, then ``"end"``."""
    seen: list[Any] = []

    def read() -> None:
        conn = http.client.HTTPConnection(emu.host, emu.port, timeout=20)
        try:
            conn.request("GET", f"{COLL}?watch=true&resourceVersion={since}&timeoutSeconds=30")
            resp = conn.getresponse()
            assert resp.status == 200
            while line := resp.readline():
                seen.append(json.loads(line))
            seen.append("end")
        finally:
            conn.close()

    started = emu.watchers_started
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while emu.watchers_started == started and time.monotonic() < deadline:
        time.sleep(0.01)  # the watch must be open before the test changes anything
    return thread, seen


def _crd_body() -> dict[str, Any]:
    docs = yaml.safe_load_all(CRD_PATH.read_text())
    return next(d for d in docs if d and d["metadata"]["name"] == CRD_NAME)


def test_deleting_the_crd_removes_its_objects_ends_watches_then_404(
    kube_emulator, kube_api_client, custom_api, kube_raw, taskaction
):
    for name in ("a", "b"):
        custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction(name))
    thread, seen = _watch_in_thread(kube_emulator, kube_emulator.store.rv)

    client.ApiextensionsV1Api(kube_api_client).delete_custom_resource_definition(CRD_NAME)

    thread.join(10)
    assert not thread.is_alive(), f"the watch was not ended: {seen}"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen[:-1]] == [
        ("DELETED", "a"),
        ("DELETED", "b"),
    ]
    assert seen[-1] == "end"
    for path in (COLL, f"{COLL}/a", f"{COLL}?watch=true"):
        status, headers, body = kube_raw("GET", path)
        assert (status, body) == (404, b"404 page not found\n"), path
        assert headers["Content-Type"].startswith("text/plain")
    status, _, body = kube_raw("POST", COLL, taskaction("c"))
    assert (status, body) == (404, b"404 page not found\n")

    # Installed again: served, and empty (the old objects are gone for good).
    client.ApiextensionsV1Api(kube_api_client).create_custom_resource_definition(_crd_body())
    status, _, body = kube_raw("GET", COLL)
    assert status == 200, body
    assert json.loads(body)["items"] == []
    custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))


def test_deleting_another_crd_leaves_watches_open(kube_emulator, kube_api_client, kube_raw):
    other = _crd_body()
    other["metadata"]["name"] = f"others.{G}"
    names = other["spec"]["names"]
    names.update(plural="others", singular="other", kind="Other", listKind="OtherList")
    names.pop("shortNames", None)
    names.pop("categories", None)
    extensions = client.ApiextensionsV1Api(kube_api_client)
    extensions.create_custom_resource_definition(other)
    thread, seen = _watch_in_thread(kube_emulator, kube_emulator.store.rv)
    extensions.delete_custom_resource_definition(f"others.{G}")
    thread.join(0.5)
    assert thread.is_alive() and seen == []  # taskactions are still served
    assert kube_raw("GET", COLL)[0] == 200
    kube_emulator.close_watches()
    thread.join(5)
    assert seen == ["end"]
