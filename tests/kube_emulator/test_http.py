"""Emulator HTTP/1.1 framing checked by a second, strict client stack (httpx over h11):
persistent connections, Content-Length, chunked watches and chunked request bodies."""

from __future__ import annotations

import json
import threading

import httpx

G, V, NS, P = "flyte.org", "v1", "flyte", "taskactions"
COLL = f"/apis/{G}/{V}/namespaces/{NS}/{P}"


def test_keep_alive_and_content_length(kube_emulator, taskaction):
    with httpx.Client(base_url=kube_emulator.url, timeout=5) as client:
        for path in ("/version", "/api", "/apis", f"/apis/{G}/{V}", COLL, "/healthz"):
            resp = client.get(path)
            assert resp.status_code == 200, path
            assert resp.headers["content-length"] == str(len(resp.content))
            assert "transfer-encoding" not in resp.headers
        resp = client.post(COLL, json=taskaction("a"))
        assert resp.status_code == 201
        resp = client.get(f"{COLL}/missing")
        assert resp.status_code == 404 and resp.headers["content-type"] == "application/json"
        resp = client.head(COLL)
        assert resp.status_code == 200 and resp.content == b""
        # Every request above went over one kept-alive connection.
        assert kube_emulator.describe()["connections"] == 1


def test_chunked_request_body(kube_emulator, taskaction):
    payload = json.dumps(taskaction("chunky")).encode()

    def body():
        yield payload[:10]
        yield payload[10:]

    with httpx.Client(base_url=kube_emulator.url, timeout=5) as client:
        resp = client.post(COLL, content=body())
        assert resp.status_code == 201, resp.text
        assert client.get(f"{COLL}/chunky").json()["metadata"]["name"] == "chunky"


def test_streamed_watch_with_httpx(kube_emulator, custom_api, taskaction):
    rv = kube_emulator.store.rv
    timer = threading.Timer(
        0.2, lambda: custom_api.create_namespaced_custom_object(G, V, NS, P, taskaction("w"))
    )
    timer.start()
    with (
        httpx.Client(base_url=kube_emulator.url, timeout=5) as client,
        client.stream("GET", f"{COLL}?watch=true&resourceVersion={rv}&timeoutSeconds=1") as resp,
    ):
        assert resp.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in resp.headers
        events = [json.loads(line) for line in resp.iter_lines() if line]
    timer.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w")]
    # The connection survives a cleanly ended watch and is reused.
    with httpx.Client(base_url=kube_emulator.url, timeout=5) as client:
        assert client.get("/version").json()["major"] == "1"


def test_connection_close_request(kube_emulator):
    with httpx.Client(base_url=kube_emulator.url, timeout=5) as client:
        resp = client.get("/version", headers={"Connection": "close"})
        assert resp.status_code == 200 and resp.headers.get("connection") == "close"
