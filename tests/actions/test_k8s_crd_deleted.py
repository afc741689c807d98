"""The TaskAction CRD deleted while the service runs on the Kubernetes store, then
installed again.

Served over the wire on the API emulator, which deletes a CRD as a real API server does
(every object goes, open watches of the kind end, its endpoints answer a plain 404).
Meanwhile the service must say what is wrong (readiness, one log line naming the CRD
and the API server), refuse calls with UNAVAILABLE (not NOT_FOUND or INTERNAL), end the
open watch streams so that their clients start over, and recover by itself once the CRD
is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import yaml
from actions_harness import (
    CRD_PATH,
    WatcherView,
    aid,
    assert_no_leaked_threads,
    open_emulator,
    open_env,
    open_store,
    task_req,
    update_req,
)
from flyteidl2.common import phase_pb2 as P
from kubernetes import client

from actions.store.errors import StoreUnavailable
from connect_proto._errors import Code, RpcError

CRD_NAME = "taskactions.flyte.org"
ROOT = aid("a0")


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert_no_leaked_threads(before)


def crd_body(name: str = CRD_NAME) -> dict[str, Any]:
    docs = yaml.safe_load_all(CRD_PATH.read_text())
    return next(d for d in docs if d and d["metadata"]["name"] == name)


async def wait_for(check: Any, within: float = 20) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 - state of other threads, no event to wait on
            await trio.sleep(0.02)


def answered_404(emu: Any) -> int:
    """List and watch requests for taskactions answered 404."""
    return sum(
        1
        for _, path, code, *_ in list(emu.requests)
        if code == 404 and path.split("?")[0].endswith("/taskactions")
    )


def informer_lines(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "actions.store._informer" and r.levelno >= logging.WARNING
    ]


def warnings_and_worse(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name.startswith("actions") and r.levelno >= logging.WARNING
    ]


async def test_crd_deleted_then_reinstalled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_env("wire", backend="kubernetes") as env:
        emu, store = env.emulator, env.store
        await env.client.enqueue(task_req(ROOT))
        await env.client.enqueue(task_req(aid("c0"), parent="a0"))
        async with trio.open_nursery() as nursery:
            view = WatcherView(env.client, ROOT)
            await nursery.start(view.run)
            assert set(view.state) == {"c0"}
            extensions = client.ApiextensionsV1Api(emu.api_client())
            await trio.to_thread.run_sync(extensions.delete_custom_resource_definition, CRD_NAME)

            # Not ready, and why: the CRD and the API server are named.
            # (On the way it is "not synced": the informer re-lists, and finds the CRD gone.)
            await wait_for(lambda: CRD_NAME in store.ready()[1])
            ok, why = env.application.observed.ready()
            assert not ok and CRD_NAME in why and emu.url in why, why
            assert "store" in await env.application.readiness.failing()
            # The open watch stream was ended (its client retries and is refused).
            await wait_for(lambda: view.resyncs >= 1 and len(view.unavailable) >= 2)
            # Calls fail with UNAVAILABLE naming the CRD, not NOT_FOUND or INTERNAL.
            for call in (
                env.client.enqueue(task_req(aid("c1"), parent="a0")),
                env.client.update(update_req(aid("c0"), P.ACTION_PHASE_RUNNING)),
            ):
                with pytest.raises(RpcError) as info:
                    await call
                assert info.value.code == Code.UNAVAILABLE, info.value
                assert CRD_NAME in info.value.message, info.value.message
            # The informer keeps retrying (with backoff) and says so once.
            await wait_for(lambda: answered_404(emu) >= 4)
            lines = informer_lines(caplog.records)
            assert len(lines) == 1, lines
            assert CRD_NAME in lines[0] and emu.url in lines[0] and "404" in lines[0]
            # ... and that is the one line the outage costs: the store wrapper, the
            # fan-out, the condition timer and readiness do not echo it.
            assert warnings_and_worse(caplog.records) == lines
            assert not any(r.exc_info for r in caplog.records if r.name.startswith("actions"))

            # Installed again: the informer re-lists, the service is ready and works.
            await trio.to_thread.run_sync(extensions.create_custom_resource_definition, crd_body())
            await wait_for(lambda: store.ready() == (True, "ok"))
            assert store.relists >= 1
            await env.client.enqueue(task_req(ROOT))
            await env.client.enqueue(task_req(aid("c1"), parent="a0"))
            # The watcher reconnected and follows the new run (c0 went with the CRD).
            await wait_for(lambda: set(view.state) == {"c1"})
            await env.client.update(update_req(aid("c1"), P.ACTION_PHASE_RUNNING))
            await wait_for(lambda: view.state["c1"].phase == P.ACTION_PHASE_RUNNING)
            await wait_for(lambda: env.application.observed.ready() == (True, "ok"))
            back = [m for m in informer_lines(caplog.records) if "served again" in m]
            assert not back  # the recovery is INFO, not a warning
            recovered = [
                r.getMessage()
                for r in caplog.records
                if r.name == "actions.store._informer" and "served again" in r.getMessage()
            ]
            assert len(recovered) == 1 and CRD_NAME in recovered[0], recovered
            assert view.regressions == []
            assert warnings_and_worse(caplog.records) == lines  # nothing more on recovery
            nursery.cancel_scope.cancel()


async def test_trace_crd_deleted_then_reinstalled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trace_crd = "actiontraces.flyte.org"
    async with open_env("wire", backend="kubernetes") as env:
        emu, store = env.emulator, env.store
        extensions = client.ApiextensionsV1Api(emu.api_client())
        await trio.to_thread.run_sync(extensions.delete_custom_resource_definition, trace_crd)
        # (On the way it is "not synced": the informer re-lists, and finds the CRD gone.)
        await wait_for(lambda: trace_crd in store.ready()[1])
        ok, why = store.ready()
        assert not ok and emu.url in why, why
        await wait_for(lambda: not env.fanout.running)  # its change stream cannot run
        await trio.to_thread.run_sync(
            extensions.create_custom_resource_definition, crd_body(trace_crd)
        )
        await wait_for(lambda: store.ready() == (True, "ok"))
        await wait_for(lambda: env.fanout.running)
        async with trio.open_nursery() as nursery:
            view = WatcherView(env.client, ROOT)
            await env.client.enqueue(task_req(ROOT))
            await nursery.start(view.run)
            await env.client.enqueue(task_req(aid("c0"), parent="a0"))
            await wait_for(lambda: "c0" in view.state)
            nursery.cancel_scope.cancel()
    lines = warnings_and_worse(caplog.records)
    assert len(lines) == 1 and trace_crd in lines[0], lines  # the informer's


async def test_opening_the_store_without_the_crd_fails_at_once_naming_it() -> None:
    async with open_emulator() as emu:
        extensions = client.ApiextensionsV1Api(emu.api_client())
        await trio.to_thread.run_sync(extensions.delete_custom_resource_definition, CRD_NAME)
        with trio.fail_after(10), pytest.raises(StoreUnavailable) as info:
            await open_store("kubernetes", emu, sync_timeout=60)
        assert CRD_NAME in str(info.value) and emu.url in str(info.value)
