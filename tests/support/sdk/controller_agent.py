"""Runs in .venv-sdk (the real Flyte SDK): the SDK's remote controller driven by commands.

Reads one JSON command per line on stdin, runs it concurrently with the others through
the SDK's own code -- ``flyte._internal.controllers.remote._core.Controller`` (worker
pool + ``Informer`` watch + ``ActionCache``) built on ``ControllerClient`` (the shipped
``flyteidl2`` Connect stubs over the SDK's pyqwest client), in the unified-ActionsService
mode (``_U_USE_ACTIONS=1``) -- and writes one JSON reply per command on stdout:
``{"id": ..., "ok": true, ...}`` or ``{"id": ..., "ok": false, "error": ..., "type": ...}``.

Usage: python controller_agent.py ENDPOINT ORG PROJECT DOMAIN RUN

Commands (``op``):
  start        {name, parent, kind: task|trace|condition}  Controller.start_action
  wait         {name}                    Controller.wait_for_action -> final state
  cancel       {name}                    Controller.cancel_action
  get          {name, parent}            Controller.get_action (starts the informer)
  launch       {name, parent}            Controller._bg_launch of a fresh, unstarted
                                         Action (the enqueue path and its error handling)
  ghost        {name, parent}            register an Action that the SDK believes started
                                         (for cancel -> Abort on a missing action)
  stop         {}                        Controller.stop
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("_U_USE_ACTIONS", "1")  # the unified ActionsService, not Queue+State

# Replies go to the original stdout; everything else that prints (the SDK logs to stdout)
# goes to stderr.
REPLIES = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import flyte  # noqa: E402
from connectrpc.errors import ConnectError  # noqa: E402
from flyte._internal.controllers.remote._action import Action  # noqa: E402
from flyte._internal.controllers.remote._client import ControllerClient  # noqa: E402
from flyte._internal.controllers.remote._core import Controller  # noqa: E402
from flyte._internal.runtime.task_serde import translate_task_to_wire  # noqa: E402
from flyte._internal.runtime.types_serde import transform_native_to_typed_interface  # noqa: E402
from flyte.models import SerializationContext  # noqa: E402
from flyteidl2.common import identifier_pb2, phase_pb2  # noqa: E402

env = flyte.TaskEnvironment(name="sdk_interop")


@env.task
async def child(x: int) -> int:
    return x + 1


def action_id(run: identifier_pb2.RunIdentifier, name: str) -> identifier_pb2.ActionIdentifier:
    return identifier_pb2.ActionIdentifier(run=run, name=name)


def rpc_code(exc: BaseException | None) -> str | None:
    """The code of the ConnectError behind ``exc`` (its cause chain), if any."""
    while exc is not None:
        if isinstance(exc, ConnectError):
            return exc.code.name
        exc = exc.__cause__
    return None


def describe(action: Action) -> dict:
    phase = action.phase
    return {
        "name": action.name,
        "phase": phase_pb2.ActionPhase.Name(phase) if phase is not None else None,
        "started": action.is_started(),
        "terminal": action.is_terminal(),
        "output_uri": action.realized_outputs_uri,
        "error": action.err.message if action.err is not None else None,
        "client_error": repr(action.client_err) if action.client_err is not None else None,
        "client_error_code": rpc_code(action.client_err),
        "condition_output": (
            action.condition_output.scalar.primitive.boolean
            if action.condition_output is not None
            else None
        ),
    }


class Agent:
    def __init__(self, endpoint: str, org: str, project: str, domain: str, run: str) -> None:
        self.run = identifier_pb2.RunIdentifier(org=org, project=project, domain=domain, name=run)
        self.controller = Controller(
            client_coro=ControllerClient.for_endpoint(endpoint, insecure=True),
            workers=4,
            min_backoff_on_err_sec=0.05,
        )
        self.actions: dict[str, Action] = {}
        self.task_spec = translate_task_to_wire(
            child,
            SerializationContext(
                version="v1",
                project=project,
                domain=domain,
                org=org,
                root_dir=pathlib.Path(__file__).parent,
            ),
        )

    def new_action(self, cmd: dict) -> Action:
        aid = action_id(self.run, cmd["name"])
        parent = cmd.get("parent", "a0")
        base = f"s3://bucket/sdk-interop/{self.run.name}"
        kind = cmd.get("kind", "task")
        if kind == "task":
            return Action.from_task(
                parent_action_name=parent,
                sub_action_id=aid,
                group_data=None,
                task_spec=self.task_spec,
                inputs_uri=cmd.get("inputs_uri", f"{base}/{cmd['name']}/inputs.pb"),
                run_output_base=base,
                cache_key=cmd.get("cache_key"),
            )
        if kind == "trace":
            now = time.time()
            return Action.from_trace(
                parent_action_name=parent,
                action_id=aid,
                friendly_name="traced",
                group_data=None,
                inputs_uri=f"{base}/{cmd['name']}/inputs.pb",
                outputs_uri=f"{base}/{cmd['name']}/outputs.pb",
                start_time=now - 1.5,
                end_time=now,
                run_output_base=base,
                # The IDL requires trace.spec; record_trace always has the interface.
                typed_interface=transform_native_to_typed_interface(child.interface),
            )
        if kind == "condition":
            return Action.from_condition(
                parent_action_name=parent,
                action_id=aid,
                condition_name="approve",
                prompt="ship it?",
                data_type=bool,
                run_output_base=base,
                inputs_uri=f"{base}/{cmd['name']}/inputs.pb",
            )
        raise ValueError(kind)

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        c = self.controller
        if op == "start":
            action = self.new_action(cmd)
            self.actions[action.name] = action
            await c.start_action(action)
            return {}
        if op == "wait":
            final = await c.wait_for_action(self.actions[cmd["name"]])
            return describe(final)
        if op == "cancel":
            await c.cancel_action(self.actions[cmd["name"]])
            return describe(self.actions[cmd["name"]])
        if op == "get":
            got = await c.get_action(action_id(self.run, cmd["name"]), cmd.get("parent", "a0"))
            return {"found": got is not None, **(describe(got) if got is not None else {})}
        if op == "launch":
            action = self.new_action(cmd)
            self.actions[action.name] = action
            await c._run_coroutine_in_controller_thread(c._bg_launch(action))
            return describe(action)
        if op == "ghost":
            action = self.new_action(cmd)
            action.mark_started()
            self.actions[action.name] = action
            return describe(action)
        if op == "stop":
            await c.stop()
            return {}
        raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    agent = Agent(*sys.argv[1:6])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task] = set()

    def reply(msg: dict) -> None:
        REPLIES.write(json.dumps(msg) + "\n")
        REPLIES.flush()

    async def run(cmd: dict) -> None:
        try:
            result = await agent.handle(cmd)
            reply({"id": cmd["id"], "ok": True, **result})
        except Exception as exc:
            reply(
                {
                    "id": cmd["id"],
                    "ok": False,
                    "type": type(exc).__name__,
                    "error": str(exc),
                    "code": rpc_code(exc),
                }
            )

    reply({"id": None, "ok": True, "ready": True, "flyte": flyte.__version__})
    while line := await reader.readline():
        task = asyncio.create_task(run(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
