"""The real Flyte SDK's remote controller against the Actions Service.

The SDK (``flyte``, in ``.venv-sdk``: see scripts/sdk-venv.sh) runs as a subprocess
(tests/support/sdk/controller_agent.py): its ``Controller`` -- the worker pool that enqueues
sub-actions, the ``Informer`` that watches a parent's children, the ``ActionCache`` --
on its ``ControllerClient`` in the unified ActionsService mode (``_U_USE_ACTIONS=1``),
i.e. the shipped ``flyteidl2`` Connect stubs over pyqwest, as a parent task's pod does.
This test plays the rest of Flyte: it creates the root action and moves children
through their phases (Update, Abort, Signal) with our own ConnectClient, and checks
what the SDK sees and what the service stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from actions_harness import aid, task_req, update_req
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from sdk.support import Agent, AgentError, sdk_agent, sdk_python, served_actions

from actions import naming
from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError

SVC = "/flyteidl2.actions.ActionsService/"
ORG, PROJECT, DOMAIN = "o", "p", "development"
RUN = "r1"


class Flyte:
    """The other side of the SDK: root creation and executor-style phase changes."""

    def __init__(self, client: ConnectClient, application: object) -> None:
        self.client = client
        self.application = application

    async def enqueue(self, req: pb.EnqueueRequest) -> None:
        await self.client.unary(SVC + "Enqueue", req, pb.EnqueueResponse)

    async def update(self, name: str, phase: int, attempt: int = 1) -> None:
        await self.client.unary(
            SVC + "Update", update_req(aid(name, RUN), phase, attempt), pb.UpdateResponse
        )

    async def abort(self, name: str, reason: str = "by test") -> None:
        req = pb.AbortRequest(action_id=aid(name, RUN), reason=reason)
        await self.client.unary(SVC + "Abort", req, pb.AbortResponse)

    async def signal(self, name: str, parent: str, value: bool) -> None:
        req = pb.SignalRequest(action_id=aid(name, RUN), parent_action_name=parent)
        req.value.scalar.primitive.boolean = value
        await self.client.unary(SVC + "Signal", req, pb.SignalResponse)

    async def stored(self, name: str) -> dict | None:
        """The stored TaskAction object, or None once deleted."""
        from actions.store.errors import NotFound

        store = self.application.store  # type: ignore[attr-defined]
        try:
            return await store.get(naming.object_name(aid(name, RUN)))
        except NotFound:
            return None

    async def wait_stored(self, name: str, seconds: float = 10) -> dict:
        with trio.fail_after(seconds):
            while (obj := await self.stored(name)) is None:  # noqa: ASYNC110 - polls a store
                await trio.sleep(0.02)
        return obj


@pytest.fixture
def sdk() -> Path:
    return sdk_python()


@asynccontextmanager
async def _setup(tmp_path: Path) -> AsyncIterator[tuple[Agent, Flyte]]:
    async with served_actions() as (port, application):
        url = f"http://127.0.0.1:{port}"
        async with ConnectClient(url) as client:
            flyte = Flyte(client, application)
            await flyte.enqueue(task_req(aid("a0", RUN)))  # the root: the run service's job
            args = (url, ORG, PROJECT, DOMAIN, RUN)
            async with sdk_agent("controller_agent.py", *args, log=tmp_path / "sdk.log") as agent:
                yield agent, flyte
                await agent.call("stop")


async def _phase_seen(agent: Agent, name: str, phase: str, seconds: float = 10) -> dict:
    """Polls the SDK's informer cache until it holds ``phase`` for ``name``."""
    with trio.fail_after(seconds):
        while True:
            got = await agent.call("get", name=name, parent="a0")
            if got.get("phase") == phase:
                return got
            await trio.sleep(0.05)


async def test_children_enqueued_watched_and_completed(sdk: Path, tmp_path: Path) -> None:
    """Tasks and a trace go in through the SDK's worker pool (Enqueue); the SDK's
    informer follows each Update until wait_for_action returns the final state."""
    async with _setup(tmp_path) as (agent, flyte):
        for name in ("c1", "c2"):
            await agent.call("start", name=name, parent="a0", kind="task")
        await agent.call("start", name="t1", parent="a0", kind="trace")

        obj = await flyte.wait_stored("c1")
        spec = obj["spec"]
        assert (spec["parentActionName"], spec["actionName"]) == ("a0", "c1")
        assert spec["inputUri"] == f"s3://bucket/sdk-interop/{RUN}/c1/inputs.pb"
        assert spec["runOutputBase"] == f"s3://bucket/sdk-interop/{RUN}"
        await flyte.wait_stored("c2")

        # The trace was enqueued SUCCEEDED; the SDK waits for the watch to say so.
        trace = await agent.call("wait", name="t1")
        assert trace["phase"] == "ACTION_PHASE_SUCCEEDED", trace
        assert trace["output_uri"] == f"s3://bucket/sdk-interop/{RUN}/t1/outputs.pb"

        # The SDK's cache follows each phase the executor writes.
        await _phase_seen(agent, "c1", "ACTION_PHASE_QUEUED")
        await flyte.update("c1", P.ACTION_PHASE_INITIALIZING)
        await _phase_seen(agent, "c1", "ACTION_PHASE_INITIALIZING")
        await flyte.update("c1", P.ACTION_PHASE_RUNNING)
        await _phase_seen(agent, "c1", "ACTION_PHASE_RUNNING")
        async with trio.open_nursery() as nursery:
            waited: dict[str, dict] = {}

            async def wait(name: str) -> None:
                waited[name] = await agent.call("wait", name=name)

            nursery.start_soon(wait, "c1")
            nursery.start_soon(wait, "c2")
            await trio.sleep(0.2)
            await flyte.update("c1", P.ACTION_PHASE_SUCCEEDED)
            await flyte.update("c2", P.ACTION_PHASE_RUNNING, attempt=2)
            await flyte.update("c2", P.ACTION_PHASE_FAILED, attempt=2)
        c1, c2 = waited["c1"], waited["c2"]
        assert (c1["phase"], c1["terminal"], c1["client_error"]) == (
            "ACTION_PHASE_SUCCEEDED",
            True,
            None,
        )
        # The output URI the SDK would read outputs from: run base, shard, action, attempt.
        assert c1["output_uri"].startswith("s3://bucket/") and c1["output_uri"].endswith(
            f"/sdk-interop/{RUN}/c1/1"
        ), c1
        assert c2["phase"] == "ACTION_PHASE_FAILED" and c2["output_uri"].endswith("/c2/2"), c2


async def test_cancel_and_abort(sdk: Path, tmp_path: Path) -> None:
    """The SDK's cancel_action aborts a running child (Abort); an abort by someone else
    reaches the SDK's waiter as ABORTED; cancelling an action the service does not have
    (NOT_FOUND) is taken as already done, as the SDK intends."""
    async with _setup(tmp_path) as (agent, flyte):
        await agent.call("start", name="c1", parent="a0")
        await agent.call("start", name="c2", parent="a0")
        await flyte.wait_stored("c1")
        await flyte.wait_stored("c2")
        await flyte.update("c1", P.ACTION_PHASE_RUNNING)
        await _phase_seen(agent, "c1", "ACTION_PHASE_RUNNING")

        cancelled = await agent.call("cancel", name="c1")
        assert cancelled["phase"] == "ACTION_PHASE_ABORTED"
        with trio.fail_after(10):
            while await flyte.stored("c1") is not None:  # noqa: ASYNC110 - polls a store
                await trio.sleep(0.02)
        final = await agent.call("wait", name="c1")
        assert final["phase"] == "ACTION_PHASE_ABORTED", final

        async with trio.open_nursery() as nursery:
            waited: dict[str, dict] = {}

            async def wait() -> None:
                waited["c2"] = await agent.call("wait", name="c2")

            nursery.start_soon(wait)
            await trio.sleep(0.2)
            await flyte.abort("c2")
        assert waited["c2"]["phase"] == "ACTION_PHASE_ABORTED", waited

        await agent.call("ghost", name="never-enqueued", parent="a0")
        ghost = await agent.call("cancel", name="never-enqueued")  # Abort -> NOT_FOUND, swallowed
        assert ghost["phase"] == "ACTION_PHASE_ABORTED"
        with pytest.raises(RpcError) as info:
            await flyte.abort("never-enqueued")
        assert info.value.code == Code.NOT_FOUND


async def test_enqueue_errors_as_the_sdk_handles_them(sdk: Path, tmp_path: Path) -> None:
    """ALREADY_EXISTS (a retried Enqueue) is "started, keep watching"; NOT_FOUND (no such
    parent) and INVALID_ARGUMENT are the SDK's non-retryable per-action errors."""
    async with _setup(tmp_path) as (agent, flyte):
        await flyte.enqueue(task_req(aid("dup", RUN), "a0"))
        dup = await agent.call("launch", name="dup", parent="a0")
        assert (dup["started"], dup["client_error"]) == (True, None)

        with pytest.raises(AgentError) as info:
            await agent.call("launch", name="orphan", parent="no-such-parent")
        assert info.value.reply["type"] == "RuntimeSystemError"
        assert info.value.reply["code"] == "NOT_FOUND"

        with pytest.raises(AgentError) as info:
            await agent.call("launch", name="bad", parent="a0", inputs_uri="")
        assert (info.value.reply["type"], info.value.reply["code"]) == (
            "RuntimeSystemError",
            "INVALID_ARGUMENT",
        )

        # Through the worker pool: the error lands on the action, and its waiter returns.
        await agent.call("start", name="orphan2", parent="no-such-parent")
        orphan = await agent.call("wait", name="orphan2")
        assert orphan["client_error_code"] == "NOT_FOUND", orphan
        assert await flyte.stored("orphan2") is None


async def test_condition_signalled(sdk: Path, tmp_path: Path) -> None:
    """A condition action enqueued by the SDK; a Signal's value reaches the SDK's
    waiter inline on the ActionUpdate (``value``), as the SDK reads it."""
    async with _setup(tmp_path) as (agent, flyte):
        await agent.call("start", name="cond1", parent="a0", kind="condition")
        obj = await flyte.wait_stored("cond1")
        assert obj["spec"]["parentActionName"] == "a0"
        async with trio.open_nursery() as nursery:
            waited: dict[str, dict] = {}

            async def wait() -> None:
                waited["cond1"] = await agent.call("wait", name="cond1")

            nursery.start_soon(wait)
            await trio.sleep(0.2)
            await flyte.signal("cond1", "a0", True)
        cond = waited["cond1"]
        assert (cond["phase"], cond["condition_output"]) == ("ACTION_PHASE_SUCCEEDED", True), cond
