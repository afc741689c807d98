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

Exit codes: 0 success; 2 bad usage or input; 10 + the gRPC code number for an RPC
failure (``error: <code>: <message>`` on stderr), e.g. 15 for not_found, 24 for unavailable;
130 when interrupted.

``watch --until-done`` ends once the parent has at least one child and every child is
terminal (a watch on a parent with no children yet keeps waiting for them).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Final, TextIO

import httpx
import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import identifier_pb2, phase_pb2
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.workflow import run_definition_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from actions.phases import name as phase_name
from actions.watch_follow import WatchSink, follow_watch
from actions.watch_view import JsonLines, Screen, TableView, WatchState
from connect_proto import Code, ConnectClient, RpcError

SERVICE: Final = "/flyteidl2.actions.ActionsService/"
DEFAULT_URL: Final = "http://127.0.0.1:8091"
EXIT_USAGE: Final = 2
EXIT_RPC_BASE: Final = 10
EXIT_INTERRUPTED: Final = 130
# A watch may be silent for hours: no read timeout, but bounded connect and write.
WATCH_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
WATCH_MAX_RECONNECTS: Final = 5

ActionPhase = phase_pb2.ActionPhase
PHASE_PREFIX: Final = "ACTION_PHASE_"
VALUE_TYPES: Final = ("bool", "int", "float", "string")
CLIENT_COMMANDS: Final = frozenset({"enqueue", "update", "abort", "signal", "watch"})


class UsageError(Exception):
    """Bad flags or input file: reported as invalid_argument, exit code 2."""


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
    _require(args, (*IDENTITY, "action", "input_uri", "run_output_base"))
    action = pb.Action(
        action_id=action_id(args, args.action),
        input_uri=args.input_uri,
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


async def cmd_enqueue(args: argparse.Namespace, out: TextIO) -> int:
    request = build_enqueue(args)
    a = request.action.action_id
    label = f"{a.run.org}/{a.run.project}/{a.run.domain}/{a.run.name}/{a.name}"
    return await _unary(args, "Enqueue", request, pb.EnqueueResponse, out, f"enqueued {label}")


async def cmd_update(args: argparse.Namespace, out: TextIO) -> int:
    request = build_update(args)
    done = f"updated {_label(args, args.action)}: {phase_name(args.phase)}"
    return await _unary(args, "Update", request, pb.UpdateResponse, out, done)


async def cmd_abort(args: argparse.Namespace, out: TextIO) -> int:
    request = build_abort(args)
    done = f"aborted {_label(args, args.action)}"
    return await _unary(args, "Abort", request, pb.AbortResponse, out, done)


async def cmd_signal(args: argparse.Namespace, out: TextIO) -> int:
    request = build_signal(args)
    done = f"signalled {_label(args, args.action)}"
    return await _unary(args, "Signal", request, pb.SignalResponse, out, done)


async def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    request = build_watch(args)
    state = WatchState(
        run=f"{args.org}/{args.project}/{args.domain}/{args.run}",
        parent=args.parent_name,
        started=time.monotonic(),
    )
    live = not args.json and out.isatty()
    screen = Screen(out, live=live, color=live and not os.environ.get("NO_COLOR"))
    sink: WatchSink = JsonLines(out) if args.json else TableView(screen)
    async with make_client(args, streaming=True) as client:

        def open_stream() -> AsyncGenerator[pb.WatchForUpdatesResponse, None]:
            return client.server_stream(
                SERVICE + "WatchForUpdates",
                request,
                pb.WatchForUpdatesResponse,
                timeout_ms=_timeout_ms(args),
            )

        error: RpcError | None = None
        async with trio.open_nursery() as nursery:
            if live:
                nursery.start_soon(_tick, screen, state)
            # Errors are carried out of the nursery by hand: raised inside it they would
            # arrive wrapped in an ExceptionGroup.
            try:
                await follow_watch(open_stream, state, sink, until_done=args.until_done)
            except RpcError as exc:
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
    if not args.json and not live:
        screen.draw(state, time.monotonic())
    return 0


async def _tick(screen: Screen, state: WatchState) -> None:
    """Keep the elapsed times moving on a terminal."""
    while True:
        await trio.sleep(1.0)
        screen.draw(state, time.monotonic())


COMMANDS: Final[dict[str, Callable[[argparse.Namespace, TextIO], Awaitable[int]]]] = {
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
    try:
        return await COMMANDS[args.client_command](args, out)
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
    conn.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    conn.add_argument("--token", help="bearer token (default $ACTIONS_TOKEN)")
    conn.add_argument("--ca-file", help="PEM file of CA certificates to trust for https")
    conn.add_argument("--http2", action="store_true", help="use HTTP/2 (h2c prior knowledge)")
    conn.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"deadline in seconds (default {timeout or 'none'})",
    )
    run = common.add_argument_group("run identity (defaults: $ACTIONS_ORG etc.)")
    for name in IDENTITY:
        run.add_argument(f"--{name}", default=_env(name))
    return common


def add_client_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add enqueue, update, abort, signal and watch to an argparse ``add_subparsers()``.

    Each sets ``client_command``; pass the parsed namespace to ``run_client_command``.
    """
    common = _common(timeout=30.0)

    enqueue = subparsers.add_parser("enqueue", parents=[common], help="enqueue an action")
    enqueue.add_argument("--file", help="EnqueueRequest in proto JSON ('-' for stdin)")
    enqueue.add_argument("--action", help="action name")
    enqueue.add_argument("--parent", help="parent action name (omit for a root action)")
    enqueue.add_argument("--type", choices=("task", "trace", "condition"), default="task")
    enqueue.add_argument("--input-uri")
    enqueue.add_argument("--run-output-base")
    enqueue.add_argument("--group")
    enqueue.add_argument("--name", help="trace or condition name (default: the action name)")
    task = enqueue.add_argument_group("task")
    task.add_argument("--task-name", default="main.task", help="task id name")
    task.add_argument("--task-version", default="v1")
    task.add_argument("--task-type", default="python-task")
    task.add_argument("--short-name")
    task.add_argument("--cache-key")
    task.add_argument("--queue")
    trace = enqueue.add_argument_group("trace")
    trace.add_argument("--output-uri")
    trace.add_argument("--trace-phase", type=parse_phase, default=phase_pb2.ACTION_PHASE_SUCCEEDED)
    cond = enqueue.add_argument_group("condition")
    cond.add_argument("--condition-type", choices=VALUE_TYPES, default="bool")
    cond.add_argument("--prompt")
    enqueue.set_defaults(client_command="enqueue")

    update = subparsers.add_parser("update", parents=[common], help="report an action's phase")
    update.add_argument("--action")
    update.add_argument("--phase", type=parse_phase, required=True, help="e.g. running")
    update.add_argument("--attempt", type=int, default=1)
    update.set_defaults(client_command="update")

    abort = subparsers.add_parser("abort", parents=[common], help="abort an action")
    abort.add_argument("--action")
    abort.add_argument("--reason")
    abort.set_defaults(client_command="abort")

    signal = subparsers.add_parser("signal", parents=[common], help="resolve a condition")
    signal.add_argument("--action")
    signal.add_argument("--parent", help="the condition's parent action name")
    signal.add_argument("--value", required=True)
    signal.add_argument("--value-type", "--type", choices=VALUE_TYPES, required=True)
    signal.set_defaults(client_command="signal")

    # Its own copy of the shared options: a watch has no deadline unless asked. (Parents
    # share action objects, so set_defaults here would change every command's default.)
    watch = subparsers.add_parser(
        "watch", parents=[_common(timeout=None)], help="watch a parent's children"
    )
    watch.add_argument("parent_name", metavar="PARENT", help="parent action name")
    watch.add_argument("--until-done", action="store_true", help="exit when all are terminal")
    watch.add_argument("--json", action="store_true", help="print raw updates as JSON lines")
    watch.set_defaults(client_command="watch")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m actions.client_cli",
        description=__doc__,
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
