"""The client commands (actions.client_cli): request building, the watch table, and end to
end against the real Actions Service app (memory store) on an ephemeral port."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_driver import Capture, run
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate
from google.protobuf import json_format
from servers import TlsFiles

from actions import client_cli as cli
from actions import watch_view
from actions.app import ActionsApplication, open_memory_store
from actions.config import Config
from actions.validation import validate
from actions.watch_follow import ReconnectPolicy, follow_watch
from connect_proto._errors import Code, RpcError
from connect_proto._server.serve import make_config, serve

RUN = ["--org", "o", "--project", "p", "--domain", "development", "--run", "r1"]
URIS = ["--input-uri", "s3://bucket/in", "--run-output-base", "s3://bucket/o/p/d/r1"]
P = phase_pb2


def args_of(*argv: str) -> argparse.Namespace:
    return cli.parse_args(list(argv))


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("text", "phase"),
    [
        ("running", P.ACTION_PHASE_RUNNING),
        ("SUCCEEDED", P.ACTION_PHASE_SUCCEEDED),
        ("ACTION_PHASE_TIMED_OUT", P.ACTION_PHASE_TIMED_OUT),
        ("waiting-for-resources", P.ACTION_PHASE_WAITING_FOR_RESOURCES),
        ("6", P.ACTION_PHASE_FAILED),
    ],
)
def test_parse_phase(text: str, phase: int) -> None:
    assert cli.parse_phase(text) == phase


def test_parse_phase_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        args_of("update", *RUN, "--action", "a", "--phase", "sleeping")
    assert info.value.code == 2
    assert "unknown phase 'sleeping'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "kind", "field", "expected"),
    [
        ("true", "bool", "boolean", True),
        ("no", "bool", "boolean", False),
        ("-42", "int", "integer", -42),
        ("2.5", "float", "float_value", 2.5),
        ("hello", "string", "string_value", "hello"),
    ],
)
def test_literal_for(value: str, kind: str, field: str, expected: Any) -> None:
    primitive = cli.literal_for(value, kind).scalar.primitive
    assert primitive.WhichOneof("value") == field
    assert getattr(primitive, field) == expected


@pytest.mark.parametrize(("value", "kind"), [("maybe", "bool"), ("1.5", "int"), ("x", "float")])
def test_literal_for_rejects_bad_values(value: str, kind: str) -> None:
    with pytest.raises(cli.UsageError):
        cli.literal_for(value, kind)


@pytest.mark.parametrize(
    "extra",
    [
        ["--action", "a0"],  # a root task
        ["--action", "c1", "--parent", "a0", "--cache-key", "ck", "--queue", "q"],
        ["--action", "t1", "--parent", "a0", "--type", "trace", "--output-uri", "s3://b/t"],
        ["--action", "k1", "--parent", "a0", "--type", "condition", "--condition-type", "int"],
    ],
)
def test_enqueue_flags_build_requests_the_service_accepts(extra: list[str]) -> None:
    request = cli.build_enqueue(args_of("enqueue", *RUN, *URIS, *extra))
    validate(request)  # the service's own buf.validate rules
    action = request.action
    assert action.action_id.run.name == "r1"
    assert action.action_id.name == extra[1]
    assert action.HasField("parent_action_name") == ("--parent" in extra)
    kind = extra[extra.index("--type") + 1] if "--type" in extra else "task"
    assert action.WhichOneof("spec") == kind


def test_enqueue_from_json_file(tmp_path: Path) -> None:
    original = pb.EnqueueRequest(
        action={
            "action_id": {
                "run": {"org": "o", "project": "p", "domain": "d", "name": "r"},
                "name": "a0",
            },
            "input_uri": "s3://in",
            "run_output_base": "s3://out",
            "task": {"spec": {"task_template": {"type": "python-task"}, "short_name": "fn"}},
        }
    )
    path = tmp_path / "request.json"
    path.write_text(json_format.MessageToJson(original))
    assert cli.build_enqueue(args_of("enqueue", "--file", str(path))) == original
    with pytest.raises(cli.UsageError, match="cannot be combined with --action"):
        cli.build_enqueue(args_of("enqueue", "--file", str(path), "--action", "x"))
    path.write_text("{not json")
    with pytest.raises(cli.UsageError, match=r"request\.json"):
        cli.build_enqueue(args_of("enqueue", "--file", str(path)))


def test_missing_identity_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError, match="missing --run, --action, --input-uri"):
        cli.build_enqueue(
            args_of("enqueue", "--org", "o", "--project", "p", "--domain", "d", "--parent", "x")
        )


def test_identity_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ORG": "eo", "PROJECT": "ep", "DOMAIN": "ed", "RUN": "er"}.items():
        monkeypatch.setenv(f"ACTIONS_{name}", value)
    request = cli.build_abort(args_of("abort", "--action", "a1", "--reason", "why"))
    assert request.action_id.run.org == "eo" and request.action_id.run.name == "er"
    assert request.reason == "why"


def test_update_signal_watch_requests() -> None:
    update = cli.build_update(
        args_of("update", *RUN, "--action", "c1", "--phase", "running", "--attempt", "2")
    )
    assert (update.attempt, update.status.attempts) == (2, 2)
    assert update.status.phase == P.ACTION_PHASE_RUNNING
    validate(update)
    signal = cli.build_signal(
        args_of("signal", *RUN, "--action", "k1", "--parent", "a0", "--value", "7", "--type", "int")
    )
    assert signal.parent_action_name == "a0" and signal.value.scalar.primitive.integer == 7
    validate(signal)
    watch = args_of("watch", "a0", *RUN, "--json")
    assert watch.timeout is None  # no deadline on a watch unless asked
    assert cli.build_watch(watch).parent_action_id.name == "a0"
    assert args_of("update", *RUN, "--phase", "queued").timeout == 30.0
    assert args_of("watch", "a0", "--timeout", "3").timeout == 3.0


def test_add_client_commands_hooks_into_another_parser() -> None:
    top = argparse.ArgumentParser(prog="actions-service")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    cli.add_client_commands(sub)
    args = top.parse_args(["abort", *RUN, "--action", "a", "--token", "t"])
    assert args.command == "abort" and args.client_command == "abort"
    assert args.token == "t" and args.url == cli.DEFAULT_URL
    assert not hasattr(top.parse_args(["serve"]), "client_command")


# --------------------------------------------------------------------------- watch table


def _update(name: str, phase: int, **kw: Any) -> pb.WatchForUpdatesResponse:
    run = {"org": "o", "project": "p", "domain": "development", "name": "r1"}
    return pb.WatchForUpdatesResponse(
        action_update=ActionUpdate(action_id={"run": run, "name": name}, phase=phase, **kw)
    )


SENTINEL = pb.WatchForUpdatesResponse(control_message={"sentinel": True})
A0 = _update("a0", P.ACTION_PHASE_RUNNING)


def _state() -> watch_view.WatchState:
    state = watch_view.WatchState(run="o/p/development/r1", parent="a0", started=100.0)
    state.apply(_update("a0", P.ACTION_PHASE_RUNNING), 100.0)
    state.apply(_update("c2", P.ACTION_PHASE_QUEUED), 100.0)
    state.apply(_update("c1", P.ACTION_PHASE_RUNNING, output_uri="s3://b/xt/c1/1"), 100.0)
    state.apply(SENTINEL, 100.0)
    return state


def test_watch_state_tracks_phases_and_done() -> None:
    state = _state()
    assert state.synced and not state.done()
    assert not state.apply(_update("c1", P.ACTION_PHASE_RUNNING, output_uri="s3://b/xt/c1/1"), 101)
    assert state.apply(_update("c1", P.ACTION_PHASE_SUCCEEDED), 105.0)
    assert state.children["c1"].since == 105.0
    failed = _update("c2", P.ACTION_PHASE_FAILED)
    failed.action_update.error.code = "OOM"
    failed.action_update.error.message = "out of memory"
    assert state.apply(failed, 106.0)
    assert state.done()
    assert state.counts() == {P.ACTION_PHASE_SUCCEEDED: 1, P.ACTION_PHASE_FAILED: 1}
    state.resync()  # the stream was lost: rows stay on show until the new snapshot
    assert state.reconnecting and not state.done() and set(state.children) == {"c1", "c2"}
    assert "(reconnecting…)" in watch_view.render_table(state, 200.0)
    state.apply(_update("c1", P.ACTION_PHASE_SUCCEEDED), 300.0)
    state.apply(SENTINEL, 300.0)
    # c2 was deleted meanwhile; c1 keeps the time its phase was first seen.
    assert list(state.children) == ["c1"] and state.children["c1"].since == 105.0
    assert not state.reconnecting and state.parent_phase is None  # not restated either


def test_no_children_is_never_done() -> None:
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    state.apply(SENTINEL, 0.0)
    assert not state.done()


def test_render_table_plain() -> None:
    state = _state()
    state.apply(_update("c1", P.ACTION_PHASE_SUCCEEDED, output_uri="s3://b/xt/c1/1"), 130.0)
    assert watch_view.render_table(state, 3825.0) == (
        "run o/p/development/r1  parent a0 (RUNNING)  elapsed 1:02:05  children 2\n"
        "QUEUED 1  SUCCEEDED 1\n"
        "ACTION  PHASE           FOR  NOTE\n"
        "c1      SUCCEEDED   1:01:35  s3://b/xt/c1/1\n"
        "c2      QUEUED      1:02:05\n"
    )


def test_render_table_colour_keeps_columns_and_truncates_notes() -> None:
    state = _state()
    signalled = _update("c2", P.ACTION_PHASE_SUCCEEDED)
    signalled.action_update.value.scalar.primitive.boolean = True
    state.apply(signalled, 100.0)
    text = watch_view.render_table(state, 110.0, color=True, width=40)
    assert "\x1b[32mSUCCEEDED\x1b[0m" in text and "\x1b[36;1mRUNNING  \x1b[0m" in text
    rows = text.splitlines()[3:]
    plain = [cli_strip(row) for row in rows]
    assert plain[0].startswith("c1      RUNNING       00:10  s3://b/")
    assert plain[0].endswith("…") and len(plain[0]) <= 40
    assert plain[1] == "c2      SUCCEEDED     00:10  value: true"


def test_render_table_before_snapshot() -> None:
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    assert watch_view.render_table(state, 0.0) == (
        "run r  parent a0 (?)  elapsed 00:00  children 0  (loading snapshot)\nno children yet\n"
    )


def cli_strip(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_screen_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    screen = watch_view.Screen(out, live=True, color=False)
    state = _state()
    screen.draw(state, 100.0)
    first = out.getvalue()
    screen.draw(state, 101.0)
    lines = first.count("\n")
    assert out.getvalue()[len(first) :].startswith(f"\x1b[{lines}F\x1b[J")


# --------------------------------------------------------------------------- watch loop


class Recorder:
    """A WatchSink that remembers what it was shown."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, bool]] = []  # (what, changed)
        self.lost_with: list[Exception] = []

    def lost(self, state: watch_view.WatchState, error: Exception, now: float) -> None:
        self.lost_with.append(error)

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: watch_view.WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None:
        what = response.WhichOneof("message")
        if what == "action_update":
            what = response.action_update.action_id.name
        self.shown.append((str(what), changed))


class ScriptedStreams:
    """``open_stream`` for follow_watch: each call plays the next script, whose items are
    responses to yield or an RpcError to end the stream with."""

    def __init__(self, *scripts: list[pb.WatchForUpdatesResponse | RpcError]) -> None:
        self.scripts = list(scripts)
        self.opened = 0
        self.opened_at: list[float] = []

    def __call__(self) -> AsyncGenerator[pb.WatchForUpdatesResponse, None]:
        script = self.scripts[self.opened]
        self.opened += 1
        self.opened_at.append(trio.current_time())

        async def play() -> AsyncGenerator[pb.WatchForUpdatesResponse, None]:
            for item in script:
                if isinstance(item, RpcError):
                    raise item
                yield item

        return play()


GONE = RpcError(Code.UNAVAILABLE, "server is shutting down")


async def test_follow_watch_reconnects_after_unavailable_and_rebuilds(
    autojump_clock: trio.abc.Clock,
) -> None:
    first = [_update("c1", P.ACTION_PHASE_RUNNING), _update("c2", P.ACTION_PHASE_QUEUED)]
    streams = ScriptedStreams(
        [*first, SENTINEL, GONE], [_update("c1", P.ACTION_PHASE_SUCCEEDED), SENTINEL]
    )
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    sink = Recorder()
    await follow_watch(streams, state, sink, policy=ReconnectPolicy(base_delay=0.25))
    assert streams.opened == 2
    assert streams.opened_at[1] - streams.opened_at[0] == pytest.approx(0.5)  # first backoff
    # The second snapshot replaced the first: c2 is gone, c1 shows its new phase.
    assert {name: row.phase for name, row in state.children.items()} == {
        "c1": P.ACTION_PHASE_SUCCEEDED
    }
    assert state.synced
    synced = ("control_message", True)
    assert sink.shown == [("c1", True), ("c2", True), synced, ("c1", True), synced]
    assert sink.lost_with == [GONE]


async def test_follow_watch_fails_at_once_when_never_synced() -> None:
    streams = ScriptedStreams([GONE], [SENTINEL])
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    with pytest.raises(RpcError) as info:
        await follow_watch(streams, state, Recorder())
    assert info.value is GONE and streams.opened == 1


async def test_follow_watch_raises_other_codes_without_reconnecting() -> None:
    denied = RpcError(Code.PERMISSION_DENIED, "no")
    streams = ScriptedStreams([A0, SENTINEL, denied], [SENTINEL])
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    with pytest.raises(RpcError) as info:
        await follow_watch(streams, state, Recorder())
    assert info.value is denied and streams.opened == 1


async def test_follow_watch_gives_up_after_failures_in_a_row(
    autojump_clock: trio.abc.Clock,
) -> None:
    policy = ReconnectPolicy(max_reconnects=3)
    # Synced once, then every reconnect fails before its snapshot.
    streams = ScriptedStreams([A0, SENTINEL, GONE], *([GONE] for _ in range(policy.max_reconnects)))
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    with pytest.raises(RpcError) as info:
        await follow_watch(streams, state, Recorder(), policy=policy)
    assert info.value.code is Code.UNAVAILABLE
    assert streams.opened == 1 + policy.max_reconnects
    gaps = [b - a for a, b in zip(streams.opened_at, streams.opened_at[1:], strict=False)]
    assert gaps == pytest.approx([policy.delay(n) for n in (1, 2, 3)])


async def test_follow_watch_until_done_stops_reading() -> None:
    streams = ScriptedStreams(
        [_update("c1", P.ACTION_PHASE_SUCCEEDED), SENTINEL, _update("c9", P.ACTION_PHASE_QUEUED)]
    )
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    sink = Recorder()
    await follow_watch(streams, state, sink, until_done=True)
    assert sink.shown == [("c1", True), ("control_message", True)]  # c9 was never read


def test_table_view_draws_the_snapshot_once_then_prints_events() -> None:
    out = io.StringIO()
    view = watch_view.TableView(watch_view.Screen(out, live=False, color=False))
    state = watch_view.WatchState(run="r", parent="a0", started=0.0)
    responses = [_update("c1", P.ACTION_PHASE_QUEUED), SENTINEL]
    for response in [*responses, _update("c1", P.ACTION_PHASE_RUNNING)]:
        was_synced = state.synced
        changed = state.apply(response, 1.0)
        view.show(response, state, changed=changed, was_synced=was_synced, now=1.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("run r  parent a0")  # the table, after the sentinel only
    assert lines[-2].startswith("c1      QUEUED")
    assert re.fullmatch(r"\d\d:\d\d:\d\d c1 RUNNING", lines[-1])


# --------------------------------------------------------------------------- end to end


def _recording(app: Any, seen: list[dict[str, str]]) -> Any:
    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return wrapper


@asynccontextmanager
async def actions_server(
    tls: TlsFiles | None = None, seen: list[dict[str, str]] | None = None
) -> AsyncIterator[str]:
    """The served app (actions.app.ActionsApplication) on the memory store, port 0."""
    application = ActionsApplication(Config(port=0), open_store=open_memory_store)
    app = application.app if seen is None else _recording(application.app, seen)
    config = make_config(
        "127.0.0.1",
        0,
        certfile=str(tls.cert_pem) if tls else None,
        keyfile=str(tls.key_pem) if tls else None,
        graceful_timeout=1.0,
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, app, config)
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        finally:
            application.begin_shutdown()  # end watch streams so shutdown is quick
            nursery.cancel_scope.cancel()


def _phases(lines: list[dict[str, Any]]) -> dict[str, str]:
    latest: dict[str, str] = {}
    for line in lines:
        update = line.get("actionUpdate")
        if update:
            latest[update["actionId"]["name"]] = update.get("phase", "ACTION_PHASE_UNSPECIFIED")
    return latest


async def test_enqueue_watch_update_signal_abort_end_to_end() -> None:
    async with actions_server() as url:
        ok = await run(url, "enqueue", *RUN, *URIS, "--action", "a0")
        assert ok == (0, "enqueued o/p/development/r1/a0\n", "")
        for child in ("c1", "c2"):
            code, _, err = await run(
                url, "enqueue", *RUN, *URIS, "--action", child, "--parent", "a0"
            )
            assert code == 0, err
        code, _, err = await run(
            url,
            "enqueue",
            *RUN,
            *URIS,
            "--action",
            "k1",
            "--parent",
            "a0",
            "--type",
            "condition",
            "--condition-type",
            "bool",
        )
        assert code == 0, err

        watch_out = Capture()
        result: dict[str, Any] = {}

        async def watch() -> None:
            result["watch"] = await run(
                url, "watch", "a0", *RUN, "--json", "--until-done", out=watch_out
            )

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await watch_out.seen('"sentinel": true')
                snapshot = [json.loads(line) for line in watch_out.getvalue().splitlines()]
                assert _phases(snapshot) == {
                    "a0": "ACTION_PHASE_QUEUED",
                    "c1": "ACTION_PHASE_QUEUED",
                    "c2": "ACTION_PHASE_QUEUED",
                    "k1": "ACTION_PHASE_PAUSED",
                }
                for phase in ("running", "succeeded"):
                    code, out, err = await run(
                        url, "update", *RUN, "--action", "c1", "--phase", phase
                    )
                    assert code == 0, err
                assert out == "updated o/p/development/r1/c1: SUCCEEDED\n"
                code, _, err = await run(
                    url,
                    "signal",
                    *RUN,
                    "--action",
                    "k1",
                    "--parent",
                    "a0",
                    "--value",
                    "yes",
                    "--value-type",
                    "bool",
                )
                assert code == 0, err
                code, out, err = await run(url, "abort", *RUN, "--action", "c2", "--reason", "test")
                assert (code, out) == (0, "aborted o/p/development/r1/c2\n"), err
                # Leaving the nursery waits for the watch: it returns once all are terminal.

        code, out, err = result["watch"]
        # Every child is terminal, but c2 was aborted: not a success.
        assert (code, err) == (1, "1 of 3 children did not succeed: c2 ABORTED\n")
        lines = [json.loads(line) for line in out.splitlines()]
        assert _phases(lines) == {
            "a0": "ACTION_PHASE_QUEUED",
            "c1": "ACTION_PHASE_SUCCEEDED",
            "c2": "ACTION_PHASE_ABORTED",
            "k1": "ACTION_PHASE_SUCCEEDED",
        }
        signalled = [
            line["actionUpdate"]
            for line in lines
            if line.get("actionUpdate", {}).get("actionId", {}).get("name") == "k1"
        ][-1]
        assert signalled["value"]["scalar"]["primitive"]["boolean"] is True


async def test_watch_table_when_not_a_terminal() -> None:
    async with actions_server() as url:
        for name, parent in (("a0", []), ("c1", ["--parent", "a0"])):
            assert (await run(url, "enqueue", *RUN, *URIS, "--action", name, *parent))[0] == 0
        out = Capture()
        result: list[tuple[int, str, str]] = []

        async def watch() -> None:
            result.append(await run(url, "watch", "a0", *RUN, "--until-done", out=out))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await out.seen("ACTION")  # the snapshot table
            await run(url, "update", *RUN, "--action", "c1", "--phase", "failed")
        code, text, err = result[0]
        assert (code, err) == (1, "1 of 1 children did not succeed: c1 FAILED\n")
        assert "\x1b[" not in text  # no colour codes into a pipe
        assert text.count("ACTION  PHASE") == 1  # the table once, not again at the end
        assert " c1 FAILED failed (no error reported)" in text  # the event line
        assert text.rstrip().splitlines()[-1].endswith(" children 1: FAILED 1")  # summary


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["update", *RUN, "--action", "nope", "--phase", "running"], 15, "error: not_found: "),
        (
            ["update", *RUN, "--action", "a0", "--phase", "running", "--attempt", "0"],
            13,
            "error: invalid_argument: attempt",
        ),
        (["enqueue", *RUN, *URIS, "--action", "a0"], 16, "error: already_exists: "),
        (
            ["signal", *RUN, "--action", "a0", "--parent", "x", "--value", "1", "--type", "int"],
            15,
            "error: not_found: ",
        ),
        (["enqueue", *RUN, "--action", "x"], 2, "error: invalid_argument: missing --input-uri"),
        # No table, no "waiting for children" first: only the error.
        (["watch", "zz", *RUN], 15, "error: not_found: "),
    ],
)
async def test_errors_print_code_and_exit_per_code(
    argv: list[str], code: int, message: str
) -> None:
    async with actions_server() as url:
        assert (await run(url, "enqueue", *RUN, *URIS, "--action", "a0"))[0] == 0
        got_code, out, err = await run(url, *argv)
    assert (got_code, out) == (code, "")
    assert err.startswith(message), err


async def test_token_ca_file_and_http2(tls_files: TlsFiles) -> None:
    seen: list[dict[str, str]] = []
    async with actions_server(tls_files, seen) as url:
        code, _, err = await run(
            url,
            "enqueue",
            *RUN,
            *URIS,
            "--action",
            "a0",
            "--http2",
            "--ca-file",
            str(tls_files.ca_pem),
            "--token",
            "s3cret",
        )
        assert code == 0, err
        # Without the CA the certificate is not trusted: a transport failure.
        code, _, err = await run(url, "abort", *RUN, "--action", "a0")
        assert code == cli.EXIT_RPC_BASE + 14 and err.startswith("error: unavailable: ")
    rpc = [h for h in seen if h.get("content-type", "").startswith("application/proto")]
    assert rpc[0]["authorization"] == "Bearer s3cret"


def _python_m(*argv: str) -> list[str]:
    return [sys.executable, "-m", "actions.client_cli", *argv]


async def test_runs_as_a_module() -> None:
    async with actions_server() as url:
        done = await trio.run_process(
            _python_m("enqueue", *RUN, *URIS, "--action", "a0", "--url", url),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode() == "enqueued o/p/development/r1/a0\n"
        again = await trio.run_process(
            _python_m("enqueue", *RUN, *URIS, "--action", "a0", "--url", url),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert again.returncode == 16
    assert again.stderr.decode().startswith("error: already_exists: ")


async def test_unreachable_server_fails_fast_even_for_watch() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(10):
        code, _, err = await run(url, "watch", "a0", *RUN)
    assert code == 24 and err.startswith("error: unavailable: ")
