"""``actions-service watch``'s NOTE column with details the watch stream lacks (a
condition's prompt, an abort's reason), fetched from the console read API once per child
and phase; a failure of that leaves the phase's plain note and the watch goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from cli_driver import Capture, run
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate

from actions import client_cli as cli
from actions import watch_view
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.app import ActionsApplication, open_memory_store
from actions.config import Config
from actions.watch_follow import follow_watch
from connect_proto import ConnectClient
from connect_proto._server.serve import make_config, serve

P = phase_pb2
RUN = ["--org", "o", "--project", "p", "--domain", "development", "--run", "r1"]
URIS = ["--input-uri", "s3://bucket/in", "--run-output-base", "s3://bucket/o/p/d/r1"]
CONSOLE = "/flyte_actions.console.v1.ConsoleService/"
SENTINEL = pb.WatchForUpdatesResponse(control_message={"sentinel": True})


def update(name: str, phase: int, **kw: Any) -> pb.WatchForUpdatesResponse:
    run = {"org": "o", "project": "p", "domain": "development", "name": "r1"}
    return pb.WatchForUpdatesResponse(
        action_update=ActionUpdate(action_id={"run": run, "name": name}, phase=phase, **kw)
    )


# --------------------------------------------------------------------------- pure parts


def test_detail_note_says_what_the_view_adds() -> None:
    paused = cpb.ActionView(
        phase="PAUSED", condition=cpb.ConditionInfo(prompt="Ship it?", value_type="bool")
    )
    assert watch_view.detail_note(paused) == "waiting for bool: Ship it?"
    unnamed = cpb.ActionView(phase="PAUSED", condition=cpb.ConditionInfo())
    assert watch_view.detail_note(unnamed) == "waiting for a signal"
    # A deleted action's last stored phase is not ABORTED; its reason says it was.
    aborted = cpb.ActionView(phase="RUNNING", abort_reason="wrong shard")
    assert watch_view.detail_note(aborted) == "aborted: wrong shard"
    assert watch_view.detail_note(cpb.ActionView(phase="ABORTED")) == ""
    failed = cpb.ActionView(phase="FAILED", error=cpb.ActionError(code="OOM", message="boom"))
    assert watch_view.detail_note(failed) == "error: [OOM] boom"
    timed_out = cpb.ActionView(phase="TIMED_OUT", condition=cpb.ConditionInfo(prompt="Go?"))
    assert watch_view.detail_note(timed_out) == "timed out waiting: Go?"
    assert watch_view.detail_note(cpb.ActionView(phase="SUCCEEDED")) == ""


class Details:
    """A FetchDetails that records what it was asked and answers from ``notes``."""

    def __init__(self, notes: dict[str, str]) -> None:
        self.notes = notes
        self.asked: list[list[str]] = []

    async def __call__(self, names: list[str]) -> dict[str, str]:
        self.asked.append(list(names))
        return {name: self.notes[name] for name in names if name in self.notes}


class Shown:
    def __init__(self) -> None:
        self.notes: list[dict[str, str]] = []

    def show(self, response: Any, state: watch_view.WatchState, **kw: Any) -> None:
        self.notes.append({row.name: row.shown_note for row in state.children.values()})

    def lost(self, state: watch_view.WatchState, error: Exception, now: float) -> None:
        pass


def script(*responses: pb.WatchForUpdatesResponse) -> Any:
    async def play() -> AsyncIterator[pb.WatchForUpdatesResponse]:
        for response in responses:
            yield response

    return play


async def test_details_asked_once_per_child_and_phase_before_it_is_shown() -> None:
    details = Details({"k1": "waiting for bool: Ship it?", "c2": "aborted: wrong shard"})
    state = watch_view.WatchState(run="o/p/development/r1", parent="a0", started=0.0)
    shown = Shown()
    responses = [
        update("a0", P.ACTION_PHASE_RUNNING),
        update("k1", P.ACTION_PHASE_PAUSED),
        update("k2", P.ACTION_PHASE_PAUSED),  # nothing to add: the plain note stays
        update("c1", P.ACTION_PHASE_QUEUED),
        update("c2", P.ACTION_PHASE_RUNNING),
        SENTINEL,
        update("c1", P.ACTION_PHASE_RUNNING),
        update("k1", P.ACTION_PHASE_PAUSED, output_uri="s3://x"),  # same phase, new update
        update("c2", P.ACTION_PHASE_ABORTED),
        update("c2", P.ACTION_PHASE_ABORTED, output_uri="s3://y"),
        update("c1", P.ACTION_PHASE_FAILED, error={"code": "E", "message": "bad"}),
    ]
    await follow_watch(script(*responses), state, shown, details=details)
    # The snapshot's children at once, then only c2 when it was aborted; never c1 (its
    # error came with the update) nor k1 again.
    assert details.asked == [["k1", "k2"], ["c2"]]
    at_snapshot = shown.notes[5]
    assert at_snapshot["k1"] == "waiting for bool: Ship it?"
    assert at_snapshot["k2"] == "waiting for a signal"
    assert shown.notes[8]["c2"] == "aborted: wrong shard"
    assert state.children["c1"].shown_note == "error: [E] bad"


async def test_failed_details_leave_the_plain_note() -> None:
    async def failing(names: list[str]) -> dict[str, str]:
        return {}

    state = watch_view.WatchState(run="o/p/development/r1", parent="a0", started=0.0)
    shown = Shown()
    await follow_watch(
        script(update("k1", P.ACTION_PHASE_PAUSED), SENTINEL), state, shown, details=failing
    )
    assert state.children["k1"].shown_note == "waiting for a signal"
    assert state.wanting_details() == []  # asked once: not again for this phase


# --------------------------------------------------------------------------- end to end


class Paths:
    """Records the path of every HTTP request the app gets."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)

    def console_calls(self) -> list[str]:
        return [p.removeprefix(CONSOLE) for p in self.seen if p.startswith(CONSOLE)]


@asynccontextmanager
async def actions_server(tokens: Path | None = None) -> AsyncIterator[tuple[str, Paths]]:
    application = ActionsApplication(
        Config(port=0, auth_token_file=tokens), open_store=open_memory_store
    )
    paths = Paths(application.app)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, paths, make_config("127.0.0.1", 0, graceful_timeout=1.0))
        try:
            yield f"http://127.0.0.1:{port}", paths
        finally:
            application.begin_shutdown()
            nursery.cancel_scope.cancel()


async def ok(url: str, *argv: str) -> None:
    code, _, err = await run(url, *argv)
    assert code == 0, err


async def setup_run(url: str, *token: str, prompts: dict[str, str] | None = None) -> None:
    await ok(url, "enqueue", *RUN, *URIS, "--action", "a0", *token)
    for child in ("c1", "c2"):
        await ok(url, "enqueue", *RUN, *URIS, "--action", child, "--parent", "a0", *token)
    headers = {"authorization": f"Bearer {token[1]}"} if token else {}
    async with ConnectClient(url, headers=headers) as client:
        for name, prompt in (prompts or {"k1": "Ship it?"}).items():
            argv = ["enqueue", *RUN, *URIS, "--action", name, "--parent", "a0"]
            request = cli.build_enqueue(
                cli.parse_args([*argv, "--type", "condition", "--condition-type", "bool"])
            )
            request.action.condition.prompt = prompt
            await client.unary(cli.SERVICE + "Enqueue", request, pb.EnqueueResponse)


async def test_watch_shows_a_prompt_and_an_abort_reason_from_a_real_server() -> None:
    async with actions_server() as (url, paths):
        await setup_run(url, prompts={"k1": "Ship it?", "k2": "Really?"})
        out = Capture()
        result: list[tuple[int, str, str]] = []

        async def watch() -> None:
            result.append(await run(url, "watch", "a0", *RUN, "--until-done", out=out))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await out.seen("ACTION")  # the snapshot table
                for phase in ("running", "succeeded"):
                    await ok(url, "update", *RUN, "--action", "c1", "--phase", phase)
                await ok(url, "abort", *RUN, "--action", "c2", "--reason", "wrong shard")
                await out.seen("c2 ABORTED")
                for name in ("k1", "k2"):
                    await ok(url, "signal", *RUN, "--action", name, "--parent", "a0",
                             "--value", "true", "--value-type", "bool")  # fmt: skip
        code, text, err = result[0]
        assert (code, err) == (1, "1 of 4 children did not succeed: c2 ABORTED\n")
        rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("k")}
        assert rows["k1"].endswith("waiting for bool: Ship it?")
        assert rows["k2"].endswith("waiting for bool: Really?")
        assert " c2 ABORTED aborted: wrong shard" in text  # the event line
        # One request for the snapshot's two conditions, one for c2 when aborted; none
        # for c1's changes nor for the conditions resolved.
        assert paths.console_calls() == ["GetRun", "GetAction"]


TOKENS = """\
tokens:
  - {name: writer, token: writer-token, allow: ["/flyteidl2.actions.ActionsService/*"]}
"""


async def test_watch_without_the_read_api_shows_the_phase(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    token = ("--token", "writer-token")
    async with actions_server(tokens) as (url, paths):
        await setup_run(url, *token)
        out = Capture()
        result: list[tuple[int, str, str]] = []

        async def watch() -> None:
            result.append(await run(url, "watch", "a0", *RUN, "--until-done", *token, out=out))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await out.seen("ACTION")
                await ok(url, "abort", *RUN, "--action", "c2", "--reason", "wrong shard", *token)
                for child in ("c1", "k1"):
                    await ok(url, "abort", *RUN, "--action", child, *token)
        code, text, err = result[0]
        assert code == 1, err
        assert "waiting for a signal" in text
        assert " c2 ABORTED aborted" in text
        assert "wrong shard" not in text
        # Refused once (permission denied): not asked again.
        assert paths.console_calls() == ["GetAction"]
