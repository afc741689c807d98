"""End to end with the SDK's task runtime: parent tasks that call sub-tasks.

Each parent in tests/support/sdk/e2e_workflow.py runs as Flyte runs it in a task pod -- the
container args of its task template (``a0 --inputs ... --resolver ... parent``) in
.venv-sdk, with the endpoint in ``_U_EP_OVERRIDE`` -- so each ``await add_one(...)``
goes through the SDK's ``RemoteController``: inputs upload, deterministic action names,
Enqueue, the informer's WatchForUpdates, outputs (or the error) read back.

The test is the rest of Flyte: it enqueues the root action, and a small executor runs
every child it sees QUEUED on the watch from the task template stored with it (the
container args, templates filled in, ``--outputs-path`` = the output URI the service
reports), reports RUNNING and SUCCEEDED/FAILED with Update, and on failure records the
error on the action's status (``errorState``) as Flyte's executor does. Storage is the
local filesystem (``file://store/...`` relative to the working directory, tmp_path).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from actions_harness import aid
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from flyteidl2.core import tasks_pb2
from flyteidl2.task import task_definition_pb2
from sdk.support import SDK_DIR, run_driver, sdk_env, sdk_python, served_actions

from actions import naming, objects
from connect_proto._client import ConnectClient

SVC = "/flyteidl2.actions.ActionsService/"
RUN = "r1"
BASE = f"file://store/runs/{RUN}"
TOOLS = "e2e_tools.py"


@dataclass
class Executor:
    """Runs actions from their stored task template, as Flyte's executor does."""

    client: ConnectClient
    store: Any
    cwd: Path
    url: str
    exit_codes: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)

    async def update(self, name: str, phase: int) -> None:
        req = pb.UpdateRequest(action_id=aid(name, RUN), attempt=1)
        req.status.phase = phase  # type: ignore[assignment]
        req.status.attempts = 1
        await self.client.unary(SVC + "Update", req, pb.UpdateResponse)
        self.phases[name] = phase

    async def output_prefix(self, name: str) -> str:
        obj = await self.store.get(naming.object_name(aid(name, RUN)))
        return objects.output_uri_of(obj, "flyte")

    async def record_error(self, name: str, prefix: str) -> None:
        """The error the task uploaded, onto the action's status (the executor's job)."""
        err = await run_driver(TOOLS, "error", prefix, cwd=self.cwd)
        obj = await self.store.get(naming.object_name(aid(name, RUN)))
        status = dict(obj.get("status") or {})
        status["errorState"] = err
        await self.store.update_status({**obj, "status": status})

    async def run(self, name: str) -> int:
        obj = await self.store.get(naming.object_name(aid(name, RUN)))
        spec = obj["spec"]
        template = tasks_pb2.TaskTemplate()
        template.ParseFromString(base64.b64decode(spec["taskTemplate"]))
        prefix = objects.output_uri_of(obj, "flyte")
        values = {
            "{{.input}}": spec["inputUri"],
            "{{.outputPrefix}}": prefix,
            "{{.rawOutputDataPrefix}}": f"file://store/raw/{name}",
            "{{.checkpointOutputPrefix}}": f"file://store/checkpoints/{name}",
            "{{.prevCheckpointPrefix}}": "",
            "{{.runName}}": RUN,
            "{{.actionName}}": name,
            "{{.runStartTime}}": "2026-01-01T00:00:00Z",
        }
        args = [values.get(a, a) for a in template.container.args]
        args[0] = str(sdk_python().parent / args[0])  # the image's a0 is .venv-sdk's
        env = sdk_env()
        env.update(
            _U_EP_OVERRIDE=self.url,
            _U_INSECURE="true",
            _U_ORG_NAME=obj["metadata"]["annotations"]["flyte.org/org"],  # no org in the spec
            FLYTE_INTERNAL_EXECUTION_PROJECT=spec["project"],
            FLYTE_INTERNAL_EXECUTION_DOMAIN=spec["domain"],
            _U_RUN_BASE=spec["runOutputBase"],
            # Local storage stands in for the bucket: let fsspec create directories.
            FSSPEC_FILE_AUTO_MKDIR="true",
        )
        await self.update(name, P.ACTION_PHASE_RUNNING)
        with (self.cwd / f"{name}.log").open("wb") as log:
            result = await trio.run_process(
                args, cwd=str(self.cwd), env=env, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        self.exit_codes[name] = result.returncode
        error_pb = self.cwd / prefix.removeprefix("file://") / "error.pb"
        if error_pb.exists():
            await self.record_error(name, prefix)
            await self.update(name, P.ACTION_PHASE_FAILED)
        elif result.returncode != 0:
            await self.update(name, P.ACTION_PHASE_FAILED)
        else:
            await self.update(name, P.ACTION_PHASE_SUCCEEDED)
        return result.returncode

    async def children(self, parent: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Runs each child of ``parent`` that the watch reports QUEUED."""
        started: set[str] = set()
        req = pb.WatchForUpdatesRequest(parent_action_id=aid(parent, RUN))
        stream = self.client.server_stream(SVC + "WatchForUpdates", req, pb.WatchForUpdatesResponse)
        try:
            async with trio.open_nursery() as nursery:
                async for msg in stream:
                    if msg.HasField("control_message"):
                        task_status.started()
                        continue
                    update = msg.action_update
                    name = update.action_id.name
                    queued = update.phase == P.ACTION_PHASE_QUEUED
                    if name != parent and queued and name not in started:
                        started.add(name)
                        nursery.start_soon(self.run, name)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


@dataclass
class Outcome:
    executor: Executor
    root_prefix: str
    logs: dict[str, str]

    @property
    def children(self) -> list[str]:
        return sorted(n for n in self.executor.exit_codes if n != "a0")


def _logs(directory: Path) -> dict[str, str]:
    """The tail of each action's runtime log, for assertion messages."""
    return {p.name: p.read_text(errors="replace")[-3000:] for p in directory.glob("*.log")}


async def run_workflow(tmp_path: Path, task: str, n: int) -> Outcome:
    """Registers ``task`` (its wire TaskSpec), enqueues it as the root a0 of run r1,
    and executes a0 and every action it enqueues until a0 ends."""
    shutil.copy(SDK_DIR / "e2e_workflow.py", tmp_path / "e2e_workflow.py")
    spec_b64 = (await run_driver(TOOLS, "spec", task, str(tmp_path), cwd=tmp_path))["spec"]
    inputs = f"{BASE}/a0/inputs.pb"
    await run_driver(TOOLS, "inputs", task, inputs, str(n), cwd=tmp_path)
    spec = task_definition_pb2.TaskSpec()
    spec.ParseFromString(base64.b64decode(spec_b64))
    tid = spec.task_template.id
    root = pb.EnqueueRequest(
        action=pb.Action(
            action_id=aid("a0", RUN),
            input_uri=inputs,
            run_output_base=BASE,
            task={
                "spec": spec,
                "id": {f: getattr(tid, f) for f in ("org", "project", "domain", "name", "version")},
            },
        )
    )
    async with served_actions() as (port, application):
        url = f"http://127.0.0.1:{port}"
        async with ConnectClient(url) as client:
            await client.unary(SVC + "Enqueue", root, pb.EnqueueResponse)
            executor = Executor(client, application.store, tmp_path, url)
            with trio.fail_after(45):
                async with trio.open_nursery() as nursery:
                    await nursery.start(executor.children, "a0")
                    await executor.run("a0")
                    nursery.cancel_scope.cancel()
            prefix = await executor.output_prefix("a0")
    return Outcome(executor, prefix, _logs(tmp_path))


@pytest.fixture
def sdk() -> Path:
    return sdk_python()


async def test_parent_task_runs_children_through_the_service(sdk: Path, tmp_path: Path) -> None:
    """parent(41) = add_one(add_one(41)): two children enqueued one after the other by
    the SDK, each waited for on the watch and its output read from the reported URI."""
    out = await run_workflow(tmp_path, "parent", 41)
    ex = out.executor
    assert ex.exit_codes.get("a0") == 0 and ex.phases["a0"] == P.ACTION_PHASE_SUCCEEDED, out.logs
    assert len(out.children) == 2, out.logs
    assert all(ex.phases[c] == P.ACTION_PHASE_SUCCEEDED for c in out.children), out.logs
    result = await run_driver(TOOLS, "output", "parent", out.root_prefix, cwd=tmp_path)
    assert result == {"o0": 43}, out.logs


async def test_child_failure_reaches_the_parent(sdk: Path, tmp_path: Path) -> None:
    """The child raises; the SDK in the parent gets FAILED with the error on the
    ActionUpdate and re-raises the user's error, which fails the parent with it."""
    out = await run_workflow(tmp_path, "parent_fails", 7)
    ex = out.executor
    assert len(out.children) == 1, out.logs
    assert ex.phases[out.children[0]] == P.ACTION_PHASE_FAILED, out.logs
    assert ex.phases["a0"] == P.ACTION_PHASE_FAILED, out.logs
    err = await run_driver(TOOLS, "error", out.root_prefix, cwd=tmp_path)
    assert "boom 7" in err["message"], (err, out.logs)
    assert err["kind"] == "USER", (err, out.logs)
