"""Emulator watch streams: framing, start, 410, bookmarks, filters."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from kube_emulator import Emulator
from kubernetes import watch
from kubernetes.client import ApiException

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
COLL = f"/apis/{G}/{V}/namespaces/{NS}/{P}"


def _create(api, body):
    return api.create_namespaced_custom_object(G, V, NS, P, body)


def _events(emu: Emulator, query: str, *, limit: int | None = None, timeout: float = 10):
    """Read a watch with http.client until the server ends it (or ``limit`` events)."""
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=timeout)
    try:
        conn.request("GET", f"{COLL}?watch=true&{query}")
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        out = []
        while limit is None or len(out) < limit:
            line = resp.readline()
            if not line:
                break
            out.append(json.loads(line))
        return out
    finally:
        conn.close()


def _rv(obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


# --- framing --------------------------------------------------------------------------


def _read_headers(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before headers"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _read_chunk(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    while b"\r\n" not in buf:
        buf += sock.recv(4096)
    size_line, buf = buf.split(b"\r\n", 1)
    size = int(size_line, 16)
    while len(buf) < size + 2:
        more = sock.recv(4096)
        assert more, "connection closed inside a chunk"
        buf += more
    assert buf[size : size + 2] == b"\r\n"
    return buf[:size], buf[size + 2 :]


def test_watch_is_chunked_flushed_per_event_and_ends_cleanly(kube_emulator, custom_api, taskaction):
    sock = socket.create_connection((kube_emulator.host, kube_emulator.port), timeout=3)
    try:
        sock.sendall(
            f"GET {COLL}?watch=true&resourceVersion={kube_emulator.store.rv}&timeoutSeconds=0.6 "
            "HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n".encode()
        )
        started = time.monotonic()
        head, buf = _read_headers(sock)  # 200 arrives before any event
        assert time.monotonic() - started < 2  # the 200 comes at once, before any event exists
        lines = head.decode().lower().split("\r\n")
        assert lines[0].startswith("http/1.1 200")
        assert "transfer-encoding: chunked" in lines
        assert "content-type: application/json" in lines
        assert not any(line.startswith("content-length") for line in lines)
        _create(custom_api, taskaction("a1"))
        chunk, buf = _read_chunk(sock, buf)  # delivered while the stream is still open
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1
        event = json.loads(chunk)
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "a1"
        final, buf = _read_chunk(sock, buf)
        assert final == b""  # The terminating zero-length chunk after timeoutSeconds
        assert 0.5 < time.monotonic() - started < 3
        # The connection is still usable (persistent HTTP/1.1).
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = _read_headers(sock)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


# --- where streams start, event content ---------------------------------------


def test_watch_without_rv_starts_with_synthetic_added_in_key_order(
    kube_emulator, custom_api, taskaction
):
    b = _create(custom_api, taskaction("b"))
    a = _create(custom_api, taskaction("a"))
    for rv_query in ("", "resourceVersion=0&"):
        events = _events(kube_emulator, f"{rv_query}timeoutSeconds=0.4")
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
        ]
        # Each synthetic ADDED carries the object's own last-write RV.
        assert [_rv(e["object"]) for e in events] == [_rv(a), _rv(b)]


def test_watch_from_rv_replays_exactly_the_later_changes(kube_emulator, custom_api, taskaction):
    a = _create(custom_api, taskaction("a"))
    start = _rv(a)
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})  # no-op
    custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "a", {"metadata": {"finalizers": ["flyte.org/keep"]}}
    )
    custom_api.delete_namespaced_custom_object(G, V, NS, P, "a")  # sets deletionTimestamp
    last = custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "a", {"metadata": {"finalizers": None}}
    )
    events = _events(kube_emulator, f"resourceVersion={start}&timeoutSeconds=0.4")
    types = [e["type"] for e in events]
    assert types == ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    rvs = [_rv(e["object"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs) and rvs[0] > start
    assert "deletionTimestamp" in events[2]["object"]["metadata"]  # A MODIFIED
    deleted = events[3]["object"]
    # DELETED: the last stored state (finalizer still listed) with the deletion's own RV.
    assert deleted["metadata"]["finalizers"] == ["flyte.org/keep"]
    assert _rv(deleted) == kube_emulator.store.rv and _rv(deleted) > rvs[2]
    assert _rv(last) == _rv(deleted)


def test_watch_from_compacted_rv_gets_expired_error_event(kube_emulator, custom_api, taskaction):
    a = _create(custom_api, taskaction("a"))
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})
    kube_emulator.compact()
    events = _events(kube_emulator, f"resourceVersion={_rv(a)}")
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["code"] == 410 and status["reason"] == "Expired"
    assert status["kind"] == "Status" and status["metadata"] == {}
    assert status["message"].startswith(f"too old resource version: {_rv(a)} (")


def test_short_history_window_expires_old_resource_versions(custom_api, taskaction):
    with Emulator(crds=["k8s/crd.yaml"], namespaces=["flyte"], history_size=4) as emu:
        api = _api(emu)
        first = _create(api, taskaction("a"))
        for i in range(6):
            api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": str(i)}})
        events = _events(emu, f"resourceVersion={_rv(first)}")
        assert [e["type"] for e in events] == ["ERROR"]
        assert events[0]["object"]["code"] == 410
        # Recent enough: fine.
        events = _events(emu, f"resourceVersion={emu.store.rv - 2}&timeoutSeconds=0.4")
        assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED"]


def _api(emu: Emulator):
    from kubernetes import client

    return client.CustomObjectsApi(emu.api_client())


def test_python_client_retries_410_once_then_raises(kube_emulator, custom_api, taskaction):
    a = _create(custom_api, taskaction("a"))
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "x"}})
    kube_emulator.compact()
    kube_emulator.requests.clear()
    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        for _ in w.stream(
            custom_api.list_namespaced_custom_object,
            G,
            V,
            NS,
            P,
            resource_version=a["metadata"]["resourceVersion"],
        ):
            pass
    assert err.value.status == 410  # One silent reconnect, then the exception
    watches = [r for r in kube_emulator.requests if "watch=true" in r[1]]
    assert len(watches) == 2


def test_too_large_rv_and_invalid_rv(kube_emulator, kube_raw):
    future = kube_emulator.store.rv + 100
    started = time.monotonic()
    events = _events(kube_emulator, f"resourceVersion={future}")
    assert time.monotonic() - started >= 0.25
    assert [e["type"] for e in events] == ["ERROR"]
    status = events[0]["object"]
    assert status["code"] == 504 and status["reason"] == "Timeout"
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    status_code, _, _ = kube_raw("GET", f"{COLL}?watch=true&resourceVersion=abc")
    assert status_code == 500  # no stream for a non-numeric RV
    status_code, headers, _ = kube_raw("GET", f"{COLL}?resourceVersion={future}")
    assert status_code == 504 and headers["Retry-After"] == "1"


def test_watch_waits_for_a_slightly_future_rv(kube_emulator, custom_api, taskaction):
    target = kube_emulator.store.rv + 1
    timer = threading.Timer(0.1, lambda: _create(custom_api, taskaction("late")))
    timer.start()
    events = _events(kube_emulator, f"resourceVersion={target - 1}&timeoutSeconds=0.4")
    timer.join()
    assert [e["type"] for e in events] == ["ADDED"]


# --- filtered watches ------------------------------------------------------------------


def test_label_filtered_watch_follows_objects_across_the_filter_edge(
    kube_emulator, custom_api, taskaction
):
    start = kube_emulator.store.rv
    _create(custom_api, taskaction("a", labels={"team": "x"}))
    _create(custom_api, taskaction("b", labels={"team": "y"}))
    custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "b", {"metadata": {"labels": {"team": "x"}}}
    )
    custom_api.patch_namespaced_custom_object(
        G, V, NS, P, "a", {"metadata": {"labels": {"team": "z"}}}
    )
    custom_api.patch_namespaced_custom_object(G, V, NS, P, "a", {"spec": {"group": "quiet"}})
    events = _events(
        kube_emulator, f"resourceVersion={start}&labelSelector=team%3Dx&timeoutSeconds=0.4"
    )
    summary = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert summary == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    gone = events[2]["object"]
    assert gone["metadata"]["labels"] == {"team": "x"}  # previous content ...
    assert _rv(gone) > _rv(events[1]["object"])  # ... with the new RV


def test_field_selector_and_namespace_scoping(kube_emulator, custom_api, core_api, taskaction):
    from kubernetes.client import V1Namespace, V1ObjectMeta

    core_api.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="elsewhere")))
    custom_api.create_namespaced_custom_object(G, V, "elsewhere", P, taskaction("a"))
    _create(custom_api, taskaction("a"))
    _create(custom_api, taskaction("b"))
    events = _events(kube_emulator, "fieldSelector=metadata.name%3Da&timeoutSeconds=0.4")
    assert [
        (e["object"]["metadata"]["namespace"], e["object"]["metadata"]["name"]) for e in events
    ] == [(NS, "a")]
    conn = http.client.HTTPConnection(kube_emulator.host, kube_emulator.port, timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/{P}?watch=1&timeoutSeconds=0.4")
    lines = [json.loads(x) for x in conn.getresponse().read().splitlines()]
    conn.close()
    assert len(lines) == 3  # All namespaces, and watch=1 parses as true


# --- bookmarks --------------------------------------------------------------------


def test_bookmark_on_demand_has_only_resource_version(kube_emulator, custom_api, taskaction):
    _create(custom_api, taskaction("a"))
    result: list = []
    reader = threading.Thread(
        target=lambda: result.extend(
            _events(kube_emulator, "allowWatchBookmarks=true&timeoutSeconds=2", limit=2)
        )
    )
    reader.start()
    time.sleep(0.3)
    kube_emulator.send_bookmarks()
    reader.join(5)
    assert [e["type"] for e in result] == ["ADDED", "BOOKMARK"]
    assert result[1]["object"] == {
        "apiVersion": "flyte.org/v1",
        "kind": "TaskAction",
        "metadata": {"resourceVersion": str(kube_emulator.store.rv)},
    }


def test_no_bookmarks_unless_asked(kube_emulator):
    threading.Timer(0.2, kube_emulator.send_bookmarks).start()
    assert _events(kube_emulator, "timeoutSeconds=0.4") == []


def test_periodic_and_pre_deadline_bookmarks(taskaction):
    with Emulator(crds=["k8s/crd.yaml"], namespaces=["flyte"], bookmark_interval=0.3) as emu:
        started = time.monotonic()
        events = _events(
            emu, f"resourceVersion={emu.store.rv}&allowWatchBookmarks=1&timeoutSeconds=9", limit=2
        )
        assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
        assert 0.5 < time.monotonic() - started < 3
    with Emulator(crds=["k8s/crd.yaml"], namespaces=["flyte"]) as emu:
        started = time.monotonic()
        events = _events(emu, "allowWatchBookmarks=true&timeoutSeconds=3", limit=1)
        # Upstream sends one ~2 s before the server-side deadline.
        assert events[0]["type"] == "BOOKMARK" and 0.7 < time.monotonic() - started < 2.8


def test_send_initial_events_ends_with_annotated_bookmark(kube_emulator, custom_api, taskaction):
    _create(custom_api, taskaction("a"))
    events = _events(
        kube_emulator,
        "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        limit=2,
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    annotations = events[1]["object"]["metadata"]["annotations"]
    assert annotations == {"k8s.io/initial-events-end": "true"}


# --- the Python client's loop --------------------------------------------------------


def test_client_watch_yields_bookmarks_and_tracks_rv(kube_emulator, custom_api, taskaction):
    listed = custom_api.list_namespaced_custom_object(G, V, NS, P)
    threading.Timer(0.2, lambda: _create(custom_api, taskaction("a"))).start()
    threading.Timer(0.4, kube_emulator.send_bookmarks).start()
    w = watch.Watch()
    seen = []
    for event in w.stream(
        custom_api.list_namespaced_custom_object,
        G,
        V,
        NS,
        P,
        resource_version=listed["metadata"]["resourceVersion"],
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    ):
        seen.append(event["type"])
    assert seen == ["ADDED", "BOOKMARK"]
    assert w.resource_version == str(kube_emulator.store.rv)


def test_client_reconnects_with_tracked_rv_when_server_closes(
    kube_emulator, custom_api, taskaction
):
    a = _create(custom_api, taskaction("a"))
    threading.Timer(0.3, kube_emulator.close_watches).start()
    threading.Timer(0.6, lambda: _create(custom_api, taskaction("b"))).start()
    w = watch.Watch()
    seen = []
    for event in w.stream(
        custom_api.list_namespaced_custom_object,
        G,
        V,
        NS,
        P,
        resource_version=a["metadata"]["resourceVersion"],
        _request_timeout=5,
    ):
        seen.append(event["object"]["metadata"]["name"])
        if len(seen) == 1:
            break
    w.stop()
    assert seen == ["b"]
    watches = [r[1] for r in kube_emulator.requests if "watch=true" in r[1]]
    assert len(watches) == 2 and all(f"resourceVersion={_rv(a)}" in q for q in watches)


def test_watch_stop_from_client_releases_server_thread(kube_emulator):
    conn = http.client.HTTPConnection(kube_emulator.host, kube_emulator.port, timeout=5)
    conn.request("GET", f"{COLL}?watch=true")
    resp = conn.getresponse()
    assert resp.status == 200
    assert kube_emulator.describe()["connections"] == 1
    conn.close()
    deadline = time.monotonic() + 3
    while kube_emulator.describe()["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube_emulator.describe()["connections"] == 0


def test_client_watch_without_known_rv_ends_silently(kube_emulator, custom_api):
    # No resource_version kwarg and no event received: a server close ends the loop.
    threading.Timer(0.3, kube_emulator.close_watches).start()
    events = list(
        watch.Watch().stream(
            custom_api.list_namespaced_custom_object, G, V, NS, P, _request_timeout=5
        )
    )
    assert events == []
