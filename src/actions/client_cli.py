"""Client commands for poking at a running Actions Service over Connect.

    python -m actions.client_cli enqueue --org o --project p --domain d --run r1 --action a0 \\
        --input-uri s3://b/in --run-output-base s3://b/out
    python -m actions.client_cli enqueue --file request.json      # proto JSON EnqueueRequest
    python -m actions.client_cli update  ... --action c1 --phase running --attempt 1
    python -m actions.client_cli abort   ... --action c1 --reason "no longer needed"
    python -m actions.client_cli signal  ... --action c2 --parent a0 --value true --value-type bool
    python -m actions.client_cli watch a0 --org o --project p --domain d --run r1 [--until-done]

Every command takes ``--url`` (default http://127.0.0.1:8091), ``--token`` (or the
``ACTIONS_TOKEN`` environment variable, so the token stays out of shell history),
``--ca-file`` for a private CA, ``--http2`` and ``--timeout``. Identity flags default to
``ACTIONS_ORG``, ``ACTIONS_PROJECT``, ``ACTIONS_DOMAIN`` and ``ACTIONS_RUN`` when set.

Exit codes: see ``EXIT_CODES_HELP`` (printed by ``--help``).

``watch`` shows the parent's direct children. A parent that does not exist (the
snapshot has neither it nor any child) is an error (``not_found``, exit 15) rather than
a wait. A parent without children (a leaf) is watched until children appear, or, with
``--until-done``, until it is itself terminal. ``--until-done`` ends once every child
is terminal, and exits 1 when any FAILED, was ABORTED or TIMED_OUT. When every child
is terminal and one was aborted, ``watch`` checks whether the parent still exists; an
aborted (deleted) parent ends the watch with exit status 1. The NOTE of a paused
condition, an aborted action or a failure without an error on the stream comes from the
console read API (``NoteFetcher``), once per child and phase; without it (an older
server, a token that may not read it) the NOTE says what the phase means.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from pathlib import Path
from typing import Any, Final, TextIO

import httpx
import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import identifier_pb2, phase_pb2
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.workflow import run_definition_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.cli_parsing import SuggestingParser
from actions.phases import name as phase_name
from actions.watch_follow import OpenStream, follow_watch
from actions.watch_view import JsonLines, Screen, TableView, WatchState, detail_note
from connect_proto import Code, ConnectClient, RpcError

SERVICE: Final = "/flyteidl2.actions.ActionsService/"
CONSOLE_SERVICE: Final = "/flyte_actions.console.v1.ConsoleService/"
DEFAULT_URL: Final = "http://127.0.0.1:8091"
EXIT_UNSUCCESSFUL: Final = 1  # watch: a child failed, was aborted or timed out
EXIT_USAGE: Final = 2
EXIT_RPC_BASE: Final = 10
EXIT_INTERRUPTED: Final = 130
EXIT_CODES_HELP: Final = """\
exit status of enqueue, update, abort, signal and watch:
  0   done (watch --until-done: every child succeeded)
  1   watch: a child FAILED, was ABORTED or TIMED_OUT (--until-done), or the parent
      was aborted
  2   bad usage or input (unknown flag, missing value, URL without http:// or https://)
  10+ the RPC failed: 10 + the gRPC code, with "error: <code>: <message>" on stderr;
      e.g. 13 invalid_argument, 15 not_found (also: watch of a parent that does not
      exist), 16 already_exists, 19 failed_precondition, 24 unavailable
  130 interrupted (Ctrl-C)
"""
# A watch may be silent for hours: no read timeout, but bounded connect and write.
WATCH_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
WATCH_MAX_RECONNECTS: Final = 5
PROBE_SECONDS: Final = 10.0  # to tell whether a watched parent still exists
DETAILS_SECONDS: Final = 5.0  # one NOTE details request, at most
DETAILS_MAX_FAILURES: Final = 3  # in a row; then the watch stops asking

ActionPhase = phase_pb2.ActionPhase
PHASE_PREFIX: Final = "ACTION_PHASE_"
VALUE_TYPES: Final = ("bool", "int", "float", "string")
CLIENT_COMMANDS: Final = frozenset({"enqueue", "update", "abort", "signal", "watch"})


class UsageError(Exception):
    """Bad flags or input file: reported as invalid_argument, exit code 2."""


# --------------------------------------------------------------------------- arguments


def parse_url(text: str) -> str:
    """``--url``: an http:// or https:// URL with a host; anything else is a usage
    error (a bare ``localhost:8091`` would otherwise fail as unreachable)."""
    try:
        url = httpx.URL(text.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected http://HOST:PORT or https://HOST:PORT"
        )
    return str(url).rstrip("/")


# --------------------------------------------------------------------------- phases


def parse_phase(text: str) -> int:
    """``running``, ``RUNNING``, ``ACTION_PHASE_RUNNING`` or a number."""
    name = text.strip().upper().replace("-", "_")
    if name.isdigit() and int(name) in ActionPhase.values():
        return int(name)
    if not name.startswith(PHASE_PREFIX):
        name = PHASE_PREFIX + name
    try:
        return ActionPhase.Value(name)
    except ValueError:
        choices = ", ".join(phase_name(v) for v in ActionPhase.values() if v)
        raise argparse.ArgumentTypeError(f"unknown phase {text!r} (one of {choices})") from None


# --------------------------------------------------------------------------- requests


def run_id(args: argparse.Namespace) -> identifier_pb2.RunIdentifier:
    return identifier_pb2.RunIdentifier(
        org=args.org or "",
        project=args.project or "",
        domain=args.domain or "",
        name=args.run or "",
    )


def action_id(args: argparse.Namespace, name: str) -> identifier_pb2.ActionIdentifier:
    return identifier_pb2.ActionIdentifier(run=run_id(args), name=name)


def _require(args: argparse.Namespace, names: Iterable[str]) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n, None)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")


IDENTITY: Final = ("org", "project", "domain", "run")


def literal_for(value: str, kind: str) -> literals_pb2.Literal:
    """A scalar literal of ``kind`` (bool, int, float, string) parsed from ``value``."""
    primitive = literals_pb2.Primitive()
    try:
        if kind == "bool":
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a bool: {value!r}")
            primitive.boolean = lowered in ("true", "1", "yes")
        elif kind == "int":
            primitive.integer = int(value)
        elif kind == "float":
            primitive.float_value = float(value)
        elif kind == "string":
            primitive.string_value = value
        else:
            raise ValueError(f"unknown value type {kind!r}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=primitive))


_SIMPLE_TYPES: Final = {
    "bool": types_pb2.BOOLEAN,
    "int": types_pb2.INTEGER,
    "float": types_pb2.FLOAT,
    "string": types_pb2.STRING,
}


def _read_json_file(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


# Flags that describe the action; with --file the file alone does (identity flags may
# come from the environment, so they are not counted).
_ENQUEUE_FIELD_FLAGS: Final = ("action", "parent", "input_uri", "run_output_base", "group")


def build_enqueue(args: argparse.Namespace) -> pb.EnqueueRequest:
    if args.file:
        extra = [flag for flag in _ENQUEUE_FIELD_FLAGS if getattr(args, flag, None)]
        if extra:
            flags = ", ".join(f"--{f.replace('_', '-')}" for f in extra)
            raise UsageError(f"--file cannot be combined with {flags}")
        try:
            return json_format.Parse(_read_json_file(args.file), pb.EnqueueRequest())
        except json_format.ParseError as exc:
            raise UsageError(f"{args.file}: {exc}") from None
    # A condition has no inputs (it waits for a signal), but the IDL wants a non-empty
    # input_uri on every action: unless given, it is the run's output base.
    needed = ("run_output_base",) if args.type == "condition" else ("input_uri", "run_output_base")
    _require(args, (*IDENTITY, "action", *needed))
    action = pb.Action(
        action_id=action_id(args, args.action),
        input_uri=args.input_uri or args.run_output_base,
        run_output_base=args.run_output_base,
        group=args.group or "",
    )
    if args.parent:
        action.parent_action_name = args.parent
    if args.type == "task":
        task = run_definition_pb2.TaskAction()
        task.id.org, task.id.project, task.id.domain = args.org, args.project, args.domain
        task.id.name = args.task_name
        task.id.version = args.task_version
        task.spec.task_template.type = args.task_type
        task.spec.task_template.id.name = args.task_name
        task.spec.task_template.id.version = args.task_version
        task.spec.short_name = args.short_name or args.task_name.rsplit(".", 1)[-1]
        if args.cache_key:
            task.cache_key.value = args.cache_key
        if args.queue:
            task.queue = args.queue
        action.task.CopyFrom(task)
    elif args.type == "trace":
        trace = run_definition_pb2.TraceAction(name=args.name or args.action)
        trace.spec.SetInParent()
        trace.phase = args.trace_phase
        if args.output_uri:
            trace.outputs.output_uri = args.output_uri
        action.trace.CopyFrom(trace)
    else:
        condition = run_definition_pb2.ConditionAction(
            name=args.name or args.action,
            type=types_pb2.LiteralType(simple=_SIMPLE_TYPES[args.condition_type]),
            prompt=args.prompt or "",
        )
        action.condition.CopyFrom(condition)
    return pb.EnqueueRequest(action=action)


def build_update(args: argparse.Namespace) -> pb.UpdateRequest:
    _require(args, (*IDENTITY, "action"))
    request = pb.UpdateRequest(action_id=action_id(args, args.action), attempt=args.attempt)
    request.status.phase = args.phase
    request.status.attempts = args.attempt
    return request


def build_abort(args: argparse.Namespace) -> pb.AbortRequest:
    _require(args, (*IDENTITY, "action"))
    request = pb.AbortRequest(action_id=action_id(args, args.action))
    if args.reason is not None:
        request.reason = args.reason
    return request


def build_signal(args: argparse.Namespace) -> pb.SignalRequest:
    _require(args, (*IDENTITY, "action", "parent"))
    return pb.SignalRequest(
        action_id=action_id(args, args.action),
        parent_action_name=args.parent,
        value=literal_for(args.value, args.value_type),
    )


def build_watch(args: argparse.Namespace) -> pb.WatchForUpdatesRequest:
    _require(args, IDENTITY)
    return pb.WatchForUpdatesRequest(parent_action_id=action_id(args, args.parent_name))


# --------------------------------------------------------------------------- commands


def make_client(args: argparse.Namespace, *, streaming: bool = False) -> ConnectClient:
    headers: dict[str, str] = {}
    token = args.token or os.environ.get("ACTIONS_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    verify: ssl.SSLContext | bool = True
    if args.ca_file:
        try:
            verify = ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-file {args.ca_file}: {exc}") from None
    # A long-lived watch gets an httpx.Timeout without a read limit.
    timeout: httpx.Timeout | float = WATCH_TIMEOUT if streaming else args.timeout
    return ConnectClient(
        args.url, http2=args.http2, headers=headers, verify=verify, timeout=timeout
    )


def _timeout_ms(args: argparse.Namespace) -> int | None:
    return None if args.timeout is None else int(args.timeout * 1000)


async def _unary(
    args: argparse.Namespace,
    method: str,
    request: Message,
    response_type: type[Message],
    out: TextIO,
    done: str,
) -> int:
    async with make_client(args) as client:
        await client.unary(SERVICE + method, request, response_type, timeout_ms=_timeout_ms(args))
    out.write(done + "\n")
    return 0


def _label(args: argparse.Namespace, name: str) -> str:
    return f"{args.org}/{args.project}/{args.domain}/{args.run}/{name}"


async def cmd_enqueue(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    request = build_enqueue(args)
    a = request.action.action_id
    label = f"{a.run.org}/{a.run.project}/{a.run.domain}/{a.run.name}/{a.name}"
    return await _unary(args, "Enqueue", request, pb.EnqueueResponse, out, f"enqueued {label}")


async def cmd_update(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    request = build_update(args)
    done = f"updated {_label(args, args.action)}: {phase_name(args.phase)}"
    return await _unary(args, "Update", request, pb.UpdateResponse, out, done)


async def cmd_abort(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    request = build_abort(args)
    done = f"aborted {_label(args, args.action)}"
    return await _unary(args, "Abort", request, pb.AbortResponse, out, done)


async def cmd_signal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    request = build_signal(args)
    done = f"signalled {_label(args, args.action)}"
    return await _unary(args, "Signal", request, pb.SignalResponse, out, done)


async def cmd_watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    request = build_watch(args)
    run = f"{args.org}/{args.project}/{args.domain}/{args.run}"
    state = WatchState(run=run, parent=args.parent_name, started=time.monotonic())
    live = not args.json and out.isatty()
    screen = Screen(out, live=live, color=live and not os.environ.get("NO_COLOR"))
    sink: JsonLines | TableView = JsonLines(out) if args.json else TableView(screen)
    async with make_client(args, streaming=True) as client:

        def open_stream() -> AsyncGenerator[pb.WatchForUpdatesResponse, None]:
            return client.server_stream(
                SERVICE + "WatchForUpdates",
                request,
                pb.WatchForUpdatesResponse,
                timeout_ms=_timeout_ms(args),
            )

        async def probe_parent() -> bool:
            return await parent_exists(open_stream, args.parent_name)

        notes = None if args.json else NoteFetcher(client, request.parent_action_id.run)

        error: RpcError | None = None
        async with trio.open_nursery() as nursery:
            if live:
                nursery.start_soon(_tick, screen, state)
            # Errors are carried out of the nursery by hand: raised inside it they would
            # arrive wrapped in an ExceptionGroup.
            try:
                await follow_watch(
                    open_stream, state, sink, until_done=args.until_done,
                    probe_parent=probe_parent, details=notes,
                )  # fmt: skip
            except RpcError as exc:
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
    if state.parent_missing():
        raise RpcError(Code.NOT_FOUND, f"parent action {args.parent_name!r} not found in run {run}")
    sink.finish(state, time.monotonic())
    return _watch_outcome(state, err)


def _watch_outcome(state: WatchState, err: TextIO) -> int:
    """0, or ``EXIT_UNSUCCESSFUL`` saying why on ``err``."""
    if state.parent_gone:
        err.write(f"parent action {state.parent!r} was aborted (it no longer exists)\n")
        return EXIT_UNSUCCESSFUL
    if not state.done():
        return 0  # the server ended the stream
    bad = state.unsuccessful()
    if not bad:
        return 0
    listed = ", ".join(f"{row.name} {phase_name(row.phase)}" for row in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    err.write(f"{len(bad)} of {len(state.children)} children did not succeed: {listed}{more}\n")
    return EXIT_UNSUCCESSFUL


class NoteFetcher:
    """``watch``'s ``FetchDetails``: the NOTE of the named children from the console read
    API on the watch's client (GetAction for one, GetRun for several), each request
    bounded by ``DETAILS_SECONDS``. A failure gives no note, never an error: the read
    API missing or refused to this token stops the asking at once, other failures after
    ``DETAILS_MAX_FAILURES`` in a row."""

    def __init__(
        self, client: ConnectClient, run: identifier_pb2.RunIdentifier, *,
        seconds: float = DETAILS_SECONDS,
    ) -> None:  # fmt: skip
        self.client = client
        self.run = cpb.RunId(org=run.org, project=run.project, domain=run.domain, name=run.name)
        self.seconds = seconds
        self.failures = 0
        self.requests = 0
        self.stopped = False

    async def __call__(self, names: list[str]) -> dict[str, str]:
        if self.stopped or not names:
            return {}
        self.requests += 1
        views: list[cpb.ActionView] = []
        timeout_ms = int(self.seconds * 1000)
        with trio.move_on_after(self.seconds) as scope:
            try:
                if len(names) == 1:
                    one = await self.client.unary(
                        CONSOLE_SERVICE + "GetAction",
                        cpb.GetActionRequest(run=self.run, name=names[0]),
                        cpb.GetActionResponse,
                        timeout_ms=timeout_ms,
                    )
                    views = [one.action]
                else:
                    run = await self.client.unary(
                        CONSOLE_SERVICE + "GetRun",
                        cpb.GetRunRequest(run=self.run),
                        cpb.GetRunResponse,
                        timeout_ms=timeout_ms,
                    )
                    views = list(run.actions)
            except RpcError as exc:
                if exc.code in (Code.UNIMPLEMENTED, Code.PERMISSION_DENIED, Code.UNAUTHENTICATED):
                    self.stopped = True
                elif exc.code is not Code.NOT_FOUND:  # gone already: nothing to say
                    self._failed()
                return {}
        if scope.cancelled_caught:
            self._failed()
            return {}
        self.failures = 0
        wanted = set(names)
        found = {view.name: detail_note(view) for view in views if view.name in wanted}
        return {name: text for name, text in found.items() if text}

    def _failed(self) -> None:
        self.failures += 1
        if self.failures >= DETAILS_MAX_FAILURES:
            self.stopped = True


async def parent_exists(open_stream: OpenStream, parent: str) -> bool:
    """Whether a fresh snapshot has ``parent`` in it (True when that cannot be told
    within ``PROBE_SECONDS``: the watch goes on)."""
    with trio.move_on_after(PROBE_SECONDS):
        try:
            async with aclosing(open_stream()) as responses:
                async for response in responses:
                    if response.WhichOneof("message") == "control_message":
                        return False
                    if response.action_update.action_id.name == parent:
                        return True
        except RpcError:
            return True
    return True


async def _tick(screen: Screen, state: WatchState) -> None:
    """Keep the elapsed times moving on a terminal."""
    while True:
        await trio.sleep(1.0)
        screen.draw(state, time.monotonic())


Command = Callable[[argparse.Namespace, TextIO, TextIO], Awaitable[int]]
COMMANDS: Final[dict[str, Command]] = {
    "enqueue": cmd_enqueue,
    "update": cmd_update,
    "abort": cmd_abort,
    "signal": cmd_signal,
    "watch": cmd_watch,
}


def exit_code(code: Code) -> int:
    return EXIT_RPC_BASE + code.grpc


async def run_client_command_async(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run the parsed command; report failures as ``error: <code>: <message>``."""
    out = out or sys.stdout
    err = err or sys.stderr
    return await reporting_errors(COMMANDS[args.client_command](args, out, err), err)


async def reporting_errors(command: Awaitable[int], err: TextIO) -> int:
    """Await a command; a usage error or a failed RPC becomes one line,
    ``error: <code>: <message>``, and the exit status that goes with it."""
    try:
        return await command
    except UsageError as exc:
        err.write(f"error: {Code.INVALID_ARGUMENT.connect_name}: {exc}\n")
        return EXIT_USAGE
    except RpcError as exc:
        err.write(f"error: {exc.code.connect_name}: {exc.message}\n")
        return exit_code(exc.code)


def run_client_command(args: argparse.Namespace) -> int:
    """Entry point for a parsed client command (see ``add_client_commands``)."""
    try:
        return trio.run(run_client_command_async, args)
    except BaseException as exc:
        if _only_interrupts(exc):
            return EXIT_INTERRUPTED
        raise


def _only_interrupts(exc: BaseException) -> bool:
    # Ctrl-C may surface bare or wrapped in an ExceptionGroup by a nursery.
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


# --------------------------------------------------------------------------- arguments


def _env(name: str) -> str | None:
    return os.environ.get(f"ACTIONS_{name.upper()}") or None


def _common(timeout: float | None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--url", type=parse_url, default=DEFAULT_URL,
                      help=f"service URL, http:// or https:// (default {DEFAULT_URL})")  # fmt: skip
    conn.add_argument("--token", help="bearer token (default $ACTIONS_TOKEN)")
    conn.add_argument("--ca-file", help="PEM file of CA certificates to trust for https")
    conn.add_argument("--http2", action="store_true", help="use HTTP/2 (h2c prior knowledge)")
    conn.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"deadline in seconds (default {timeout or 'none'})",
    )
    run = common.add_argument_group("run identity")
    for name in IDENTITY:
        env = f"ACTIONS_{name.upper()}"
        run.add_argument(f"--{name}", default=_env(name),
                         help=f"the run's {name} (default ${env})")  # fmt: skip
    return common


def _subcommand(
    subparsers: argparse._SubParsersAction[Any], name: str, parent: argparse.ArgumentParser,
    help: str,
) -> argparse.ArgumentParser:  # fmt: skip
    return subparsers.add_parser(  # type: ignore[no-any-return]
        name,
        parents=[parent],
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_client_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add enqueue, update, abort, signal and watch to an argparse ``add_subparsers()``.

    Each sets ``client_command``; pass the parsed namespace to ``run_client_command``.
    """
    common = _common(timeout=30.0)

    enqueue = _subcommand(subparsers, "enqueue", common, "enqueue an action")
    enqueue.add_argument("--file", help="EnqueueRequest in proto JSON ('-' for stdin)")
    enqueue.add_argument("--action", help="action name")
    enqueue.add_argument("--parent", help="parent action name (omit for a root action)")
    enqueue.add_argument("--type", choices=("task", "trace", "condition"), default="task",
                         help="kind of action (default task)")  # fmt: skip
    enqueue.add_argument("--input-uri", help="where the action's inputs are (a condition "
                         "needs none: default --run-output-base)")  # fmt: skip
    enqueue.add_argument("--run-output-base", help="base URI of the run's outputs")
    enqueue.add_argument("--group", help="group name shown with the action (optional)")
    enqueue.add_argument("--name", help="trace or condition name (default: the action name)")
    task = enqueue.add_argument_group("task (--type task)")
    task.add_argument("--task-name", default="main.task", help="task id name (default main.task)")
    task.add_argument("--task-version", default="v1", help="task version (default v1)")
    task.add_argument("--task-type", default="python-task",
                      help="task template type (default python-task)")  # fmt: skip
    task.add_argument("--short-name", help="display name (default: last part of --task-name)")
    task.add_argument("--cache-key", help="cache key, to reuse an earlier result")
    task.add_argument("--queue", help="queue the executor takes it from")
    trace = enqueue.add_argument_group("trace (--type trace)")
    trace.add_argument("--output-uri", help="where the trace's outputs are")
    trace.add_argument("--trace-phase", type=parse_phase, default=phase_pb2.ACTION_PHASE_SUCCEEDED,
                       help="the trace's phase (default succeeded)")  # fmt: skip
    cond = enqueue.add_argument_group("condition (--type condition)")
    cond.add_argument("--condition-type", choices=VALUE_TYPES, default="bool",
                      help="type of the value a signal must carry (default bool)")  # fmt: skip
    cond.add_argument("--prompt", help="question shown to whoever signals it")
    enqueue.set_defaults(client_command="enqueue")

    update = _subcommand(subparsers, "update", common, "report an action's phase")
    update.add_argument("--action", help="action name")
    update.add_argument("--phase", type=parse_phase, required=True,
                        help="new phase, e.g. running, succeeded, failed")  # fmt: skip
    update.add_argument("--attempt", type=int, default=1, help="attempt number (default 1)")
    update.set_defaults(client_command="update")

    abort = _subcommand(subparsers, "abort", common, "abort an action and its descendants")
    abort.add_argument("--action", help="action name")
    abort.add_argument("--reason", help="why (recorded on the action and logged)")
    abort.set_defaults(client_command="abort")

    signal = _subcommand(subparsers, "signal", common, "resolve a condition with a value")
    signal.add_argument("--action", help="the condition's action name")
    signal.add_argument("--parent", help="the condition's parent action name")
    signal.add_argument("--value", required=True, help="the value, e.g. true, 3, 2.5, text")
    signal.add_argument("--value-type", "--type", choices=VALUE_TYPES, required=True,
                        help="how to read --value")  # fmt: skip
    signal.set_defaults(client_command="signal")

    # Its own copy of the shared options: a watch has no deadline unless asked. (Parents
    # share action objects, so set_defaults here would change every command's default.)
    watch = _subcommand(subparsers, "watch", _common(timeout=None), "watch a parent's children")
    watch.add_argument("parent_name", metavar="PARENT", help="parent action name")
    watch.add_argument("--until-done", action="store_true",
                       help="exit once every child is terminal (status 1 if any did not "
                       "succeed)")  # fmt: skip
    watch.add_argument("--json", action="store_true", help="print raw updates as JSON lines")
    watch.set_defaults(client_command="watch")


def parser() -> argparse.ArgumentParser:
    top = SuggestingParser(
        prog="python -m actions.client_cli",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_commands(top.add_subparsers(dest="command", required=True))
    return top


def parse_args(argv: list[str]) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_client_command(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
