"""Emulator fault knobs, the admin endpoint, subprocess mode, and clean shutdown."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import urllib3
from kube_emulator import Emulator
from kubernetes import client, watch
from kubernetes.client import ApiException

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
ROOT = Path(__file__).resolve().parents[2]


def _status(exc: ApiException) -> dict:
    return json.loads(exc.body if isinstance(exc.body, str) else exc.body.decode())


def _get_list(api):
    return api.list_namespaced_custom_object(G, V, NS, P)


# --- request errors -------------------------------------------------------------------------


def test_fail_next_matches_verbs_and_counts(kube_emulator, custom_api, taskaction):
    rule = kube_emulator.faults.fail_next(2, 500, verbs=["GET"], path="/taskactions")
    custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))  # POST unaffected
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            _get_list(custom_api)
        status = _status(err.value)
        assert err.value.status == 500 and status["reason"] == "InternalError"
        assert status["details"]["causes"] == [{"message": "injected fault"}]
    assert len(_get_list(custom_api)["items"]) == 1
    assert rule.hits == 2


def test_fail_for_a_duration(kube_emulator, custom_api):
    kube_emulator.faults.fail_for(0.3, 503, retry_after=None)
    with pytest.raises(ApiException) as err:
        _get_list(custom_api)
    assert err.value.status == 503
    time.sleep(0.35)
    _get_list(custom_api)


def test_429_with_retry_after_is_retried_by_urllib3_for_get_not_post(
    kube_emulator, custom_api, taskaction
):
    # GET/PUT/DELETE answered 429 + Retry-After are re-sent up to 3 times silently.
    kube_emulator.faults.fail_next(3, 429, retry_after=0)
    kube_emulator.requests.clear()
    _get_list(custom_api)
    assert [r[2] for r in kube_emulator.requests] == [429, 429, 429, 200]
    kube_emulator.faults.fail_next(4, 429, retry_after=0)
    with pytest.raises(ApiException) as err:
        _get_list(custom_api)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "0"
    assert _status(err.value)["details"]["retryAfterSeconds"] == 0
    kube_emulator.faults.fail_next(1, 429, retry_after=0)
    with pytest.raises(ApiException) as err:
        custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))
    assert err.value.status == 429  # POST is sent once


def test_plain_text_429_like_flow_control(kube_emulator, kube_raw):
    kube_emulator.faults.fail_next(1, 429, plain=True, retry_after=2)
    status, headers, data = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}")
    assert status == 429 and headers["Retry-After"] == "2"
    assert headers["Content-Type"].startswith("text/plain")
    assert data == b"Too many requests, please try again later.\n"


def test_latency(kube_emulator, custom_api):
    kube_emulator.faults.set_latency(0.2, path="/taskactions")
    started = time.monotonic()
    _get_list(custom_api)
    assert time.monotonic() - started >= 0.2
    kube_emulator.faults.set_latency(0)


# --- watch faults ---------------------------------------------------------------------------


def _read_watch(emu: Emulator, query: str) -> tuple[list[dict], bool]:
    """Events and whether the stream ended with its terminating chunk (raw socket)."""
    sock = socket.create_connection((emu.host, emu.port), timeout=5)
    try:
        sock.sendall(
            f"GET /apis/{G}/{V}/namespaces/{NS}/{P}?watch=true&{query} HTTP/1.1\r\n"
            "Host: x\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n0\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        clean = data.endswith(b"\r\n0\r\n\r\n")
        body = data.split(b"\r\n\r\n", 1)[1]
        events = [json.loads(line) for line in body.split(b"\r\n") if line.startswith(b"{")]
        return events, clean
    finally:
        sock.close()


def test_close_watches_after_n_events(kube_emulator, custom_api, taskaction):
    for name in "abc":
        custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction(name))
    kube_emulator.faults.close_watches_after(2)
    events, clean = _read_watch(kube_emulator, "")
    assert len(events) == 2 and clean
    kube_emulator.faults.close_watches_after(1, abrupt=True)
    events, clean = _read_watch(kube_emulator, "")
    assert len(events) == 1 and not clean


def test_close_all_watches_abruptly_surfaces_as_protocol_error(kube_emulator, custom_api):
    threading.Timer(0.3, lambda: kube_emulator.close_watches(abrupt=True)).start()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in watch.Watch().stream(
            custom_api.list_namespaced_custom_object, G, V, NS, P, _request_timeout=5
        ):
            pass


def test_refuse_connections_and_come_back_on_the_same_port(kube_emulator, custom_api):
    port = kube_emulator.port
    _get_list(custom_api)
    kube_emulator.refuse_connections()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    api = client.CustomObjectsApi(kube_emulator.api_client(retries=0))
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        _get_list(api)
    kube_emulator.accept_connections()
    assert kube_emulator.port == port
    assert _get_list(custom_api)["kind"] == "TaskActionList"


def test_refuse_drops_open_watches(kube_emulator):
    conn = http.client.HTTPConnection(kube_emulator.host, kube_emulator.port, timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}?watch=true")
    resp = conn.getresponse()
    kube_emulator.refuse_connections()
    with pytest.raises((http.client.IncompleteRead, ConnectionError, OSError)):
        line = resp.readline()
        if not line:
            raise ConnectionError("closed")
    conn.close()
    kube_emulator.accept_connections()


# --- admin endpoint -------------------------------------------------------------------------


def test_admin_endpoint(kube_emulator, kube_raw, custom_api, taskaction):
    status, _, data = kube_raw(
        "POST",
        "/_emulator/faults",
        {"errors": [{"status": 500, "count": 1, "verbs": ["GET"]}], "latency": 0},
    )
    assert status == 200 and json.loads(data)["rules"][0]["status"] == 500
    status, _, _ = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}")
    assert status == 500
    status, _, _ = kube_raw("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}")
    assert status == 200
    custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))
    status, _, data = kube_raw("POST", "/_emulator/compact")
    assert json.loads(data)["compactedResourceVersion"] == str(kube_emulator.store.rv)
    status, _, data = kube_raw("GET", "/_emulator/state")
    state = json.loads(data)
    assert state["objects"]["taskactions.flyte.org"] == 1 and state["listening"]
    status, _, _ = kube_raw("POST", "/_emulator/faults", {"gcPaused": True, "watchCloseAfter": 3})
    assert kube_emulator.faults.gc_paused and kube_emulator.faults.watch_close_after == 3
    status, _, _ = kube_raw("DELETE", "/_emulator/faults")
    assert not kube_emulator.faults.gc_paused
    assert kube_raw("POST", "/_emulator/bookmark")[0] == 200
    assert kube_raw("POST", "/_emulator/close-watches", {"abrupt": False})[0] == 200


def test_admin_refuse_for_seconds(kube_emulator, kube_raw):
    port = kube_emulator.port
    status, _, _data = kube_raw("POST", "/_emulator/refuse", {"seconds": 0.5})
    assert status == 200
    deadline = time.monotonic() + 2
    while kube_emulator.listening and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    deadline = time.monotonic() + 3
    while not kube_emulator.listening and time.monotonic() < deadline:
        time.sleep(0.05)
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- lifecycle ------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stop_leaks_no_threads_or_sockets(taskaction):
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = _open_fds()
    emu = Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=["flyte"])
    emu.start()
    api_client = emu.api_client()
    api = client.CustomObjectsApi(api_client)
    api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))
    # An open watch and an idle keep-alive connection at stop time.
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    conn.request("GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}?watch=true")
    conn.getresponse()
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 4
    conn.close()
    api_client.close()
    leftover = [
        t
        for t in threading.enumerate()
        if t.ident not in threads_before and t.name.startswith("kube-emulator")
    ]
    assert leftover == []
    assert _open_fds() <= fds_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", emu.port), timeout=1)


def test_subprocess_mode(tmp_path, taskaction):
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kube_emulator",
            "--port",
            "0",
            "--crd",
            str(ROOT / "k8s" / "crd.yaml"),
            "--namespace",
            "flyte",
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("kube-emulator serving http://127.0.0.1:")
        url = line.split()[2]
        from kubernetes import config

        api_client = config.new_client_from_config(str(kubeconfig))
        assert api_client.configuration.host == url
        api = client.CustomObjectsApi(api_client)
        api.create_namespaced_custom_object(G, V, NS, P, taskaction("a"))
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(
            "POST",
            "/_emulator/faults",
            body=json.dumps({"errors": [{"status": 500, "count": 1}]}),
        )
        assert conn.getresponse().read()
        with pytest.raises(ApiException):
            _get_list(api)
        assert len(_get_list(api)["items"]) == 1
        api_client.close()
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
