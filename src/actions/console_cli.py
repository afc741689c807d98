"""``actions-service runs`` and ``actions-service get``: the read API from a terminal.

    actions-service runs [--project P] [--domain D] [--phase running] [--since 2h] [--json]
    actions-service get RUN --project P --domain D [--org O] [--json]

``runs`` prints a table of runs, newest first; ``--limit`` runs per page (default 50),
``--page-token`` to go on where a page ended (the table's last line says how), ``--all``
to follow every page. ``get`` prints one run's actions as a tree: phase, attempts, times,
errors, abort reasons and each condition's prompt. ``--json`` prints the response as
proto JSON instead, for tools.

Connection flags, the token (``--token`` or ``ACTIONS_TOKEN``) and exit codes are those of
the other client commands (``actions.client_cli``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

import trio
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.client_cli import (
    DEFAULT_URL,
    EXIT_INTERRUPTED,
    UsageError,
    make_client,
    reporting_errors,
)
from connect_proto import ConnectClient

CONSOLE: Final = "/flyte_actions.console.v1.ConsoleService/"
CONSOLE_COMMANDS: Final = frozenset({"runs", "get"})
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
EXIT_CODES_HELP: Final = """\
exit status of runs and get:
  0   done
  2   bad usage (a flag, a time)
  10+ an RPC error: 10 + its gRPC code, e.g. 15 not_found, 26 unauthenticated,
      24 unavailable; one line on stderr says why
"""
MAX_PAGES: Final = 10_000  # --all stops here whatever the server says
FILL_CALLS: Final = 20  # calls to fill one page of filtered runs before saying "more"


# --------------------------------------------------------------------------- values


def parse_when(text: str, now: datetime | None = None) -> Timestamp:
    """RFC 3339 (``2026-01-02T03:04:05Z``; a date alone is its midnight UTC) or an age
    (``90s``, ``30m``, ``2h``, ``7d``: that long before now)."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        when = now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"not a time or an age (like 2h): {text!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def _clock(ts: Timestamp, has: bool) -> str:
    if not has:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: Timestamp, end: Timestamp | None) -> str:
    begin = start.ToDatetime(tzinfo=UTC)
    finish = end.ToDatetime(tzinfo=UTC) if end is not None else datetime.now(UTC)
    seconds = max((finish - begin).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _json(message: cpb.ListRunsResponse | cpb.GetRunResponse, out: TextIO) -> None:
    out.write(json_format.MessageToJson(message, indent=2) + "\n")


# --------------------------------------------------------------------------- runs


def build_list_runs(args: argparse.Namespace) -> cpb.ListRunsRequest:
    if args.limit is not None and not 1 <= args.limit <= 500:
        raise UsageError("--limit must be between 1 and 500")
    request = cpb.ListRunsRequest(
        org=args.org or "",
        project=args.project or "",
        domain=args.domain or "",
        phases=args.phase or [],
        page_size=args.limit or 0,
        page_token=args.page_token or "",
    )
    if args.since:
        request.created_after.CopyFrom(parse_when(args.since))
    if args.before:
        request.created_before.CopyFrom(parse_when(args.before))
    return request


def run_rows(runs: list[cpb.RunSummary]) -> list[list[str]]:
    rows = [["RUN", "PHASE", "CREATED", "DURATION", "TASK", "ERROR"]]
    for run in runs:
        r = run.run
        ident = "/".join(p for p in (r.org, r.project, r.domain, r.name) if p)
        start = run.started_at if run.HasField("started_at") else run.created_at
        end = run.ended_at if run.HasField("ended_at") else None
        rows.append(
            [
                ident,
                run.phase,
                _clock(run.created_at, run.HasField("created_at")),
                _duration(start, end) if run.HasField("created_at") else "-",
                run.task or "-",
                run.error.splitlines()[0][:80] if run.error else "",
            ]
        )
    return rows


async def cmd_runs(args: argparse.Namespace, client: ConnectClient, out: TextIO) -> int:
    request = build_list_runs(args)
    wanted = args.limit or 50
    collected = cpb.ListRunsResponse()
    for calls in range(1, MAX_PAGES + 1):
        page = await client.unary(
            CONSOLE + "ListRuns", request, cpb.ListRunsResponse, timeout_ms=_timeout_ms(args)
        )
        collected.runs.extend(page.runs)
        collected.next_page_token = page.next_page_token
        if not page.next_page_token:
            break
        # A filtered page may come back short (the server bounds each call's work): go on
        # until the page is full, or for everything with --all.
        if not args.all and (len(collected.runs) >= wanted or calls >= FILL_CALLS):
            break
        request.page_token = page.next_page_token
    if args.json:
        _json(collected, out)
        return 0
    if collected.runs:
        _table(run_rows(list(collected.runs)), out)
    else:
        out.write("no runs\n")
    if collected.next_page_token:
        out.write(f"more: --page-token {collected.next_page_token}\n")
    return 0


# --------------------------------------------------------------------------- get


def _depths(actions: list[cpb.ActionView]) -> dict[str, int]:
    by_name = {a.name: a for a in actions}
    depths: dict[str, int] = {}
    for a in actions:
        depth, parent, seen = 0, a.parent, {a.name}
        while parent in by_name and parent not in seen:
            seen.add(parent)
            depth += 1
            parent = by_name[parent].parent
        depths[a.name] = depth
    return depths


def action_detail(a: cpb.ActionView) -> str:
    parts = []
    if a.HasField("error") and (a.error.message or a.error.code):
        parts.append(": ".join(p for p in (a.error.kind, a.error.code, a.error.message) if p))
    if a.abort_reason:
        parts.append(f"abort: {a.abort_reason}")
    if a.HasField("condition"):
        c = a.condition
        prompt = c.prompt or c.name
        typed = f" ({c.value_type})" if c.value_type else ""
        parts.append(f"{prompt!r}{typed}" + (f" = {c.value}" if c.value else ""))
    if a.deleting:
        parts.append("being deleted")
    return "; ".join(parts)


def action_rows(actions: list[cpb.ActionView]) -> list[list[str]]:
    depths = _depths(actions)
    rows = [["ACTION", "TYPE", "PHASE", "ATT", "CREATED", "STARTED", "ENDED", "DETAIL"]]
    for a in actions:
        depth = depths[a.name]
        name = ("  " * (depth - 1) + "└ " if depth else "") + a.name
        kind = a.type + (f":{a.task}" if a.task else "")
        rows.append(
            [
                name,
                kind,
                a.phase,
                str(a.attempts) if a.attempts else "-",
                _clock(a.created_at, a.HasField("created_at")),
                _clock(a.started_at, a.HasField("started_at")),
                _clock(a.ended_at, a.HasField("ended_at")),
                action_detail(a),
            ]
        )
    return rows


async def cmd_get(args: argparse.Namespace, client: ConnectClient, out: TextIO) -> int:
    missing = [f"--{n}" for n in ("project", "domain") if not getattr(args, n)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")
    request = cpb.GetRunRequest(
        run=cpb.RunId(org=args.org or "", project=args.project, domain=args.domain, name=args.run)
    )
    response = await client.unary(
        CONSOLE + "GetRun", request, cpb.GetRunResponse, timeout_ms=_timeout_ms(args)
    )
    if args.json:
        _json(response, out)
        return 0
    _table(action_rows(list(response.actions)), out)
    return 0


# --------------------------------------------------------------------------- running


def _timeout_ms(args: argparse.Namespace) -> int | None:
    return None if args.timeout is None else int(args.timeout * 1000)


async def run_console_command_async(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``runs`` or ``get``; failures are one line: ``error: <code>: <message>``."""
    out = out or sys.stdout
    err = err or sys.stderr
    command = cmd_runs if args.console_command == "runs" else cmd_get

    async def run() -> int:
        async with make_client(args) as client:
            return await command(args, client, out)

    return await reporting_errors(run(), err)


def run_console_command(args: argparse.Namespace) -> int:
    try:
        return trio.run(run_console_command_async, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _connection() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    conn.add_argument("--token", help="bearer token (default $ACTIONS_TOKEN)")
    conn.add_argument("--ca-file", help="PEM file of CA certificates to trust for https")
    conn.add_argument("--http2", action="store_true", help="use HTTP/2 (h2c prior knowledge)")
    conn.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    run = common.add_argument_group("filters / run identity (defaults: $ACTIONS_ORG etc.)")
    for name in ("org", "project", "domain"):
        run.add_argument(f"--{name}", default=os.environ.get(f"ACTIONS_{name.upper()}") or None)
    common.add_argument("--json", action="store_true", help="print the response as proto JSON")
    return common


def add_console_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``runs`` and ``get``; each sets ``console_command`` (see ``run_console_command``)."""
    common = _connection()
    runs = subparsers.add_parser(
        "runs",
        parents=[common],
        help="list runs, newest first",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("--phase", action="append", help="root phase, e.g. running (repeatable)")
    runs.add_argument("--since", help="created at or after: RFC 3339 time or age (2h, 7d)")
    runs.add_argument("--before", help="created before: RFC 3339 time or age")
    runs.add_argument("--limit", type=int, help="runs per page (default 50, at most 500)")
    runs.add_argument("--page-token", help="go on after a previous page")
    runs.add_argument("--all", action="store_true", help="follow every page")
    runs.set_defaults(console_command="runs")
    get = subparsers.add_parser(
        "get",
        parents=[common],
        help="one run's action tree",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("run", metavar="RUN", help="run name")
    get.set_defaults(console_command="get")
