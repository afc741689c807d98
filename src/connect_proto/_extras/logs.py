"""Logging set-up (plain or JSON lines) and the RPC access log observer.

``configure_logging("json", "INFO")`` makes every record one JSON object per line on
stderr: ``ts``, ``level``, ``logger``, ``msg``, any ``extra`` fields, and ``exc`` for
tracebacks. ``AccessLog`` (an observer for ``ConnectApp(observers=...)``) writes one
line per call to the ``connect_proto.access`` logger (successful calls at DEBUG, the
others at INFO), with the fields as ``extra``::

    /pkg.Service/Method grpc ok 1.84ms id=4bf9... peer=127.0.0.1 principal=ci in=1 out=1

JSON output of the same line: ``{"ts": ..., "level": "INFO", "logger":
"connect_proto.access", "msg": "...", "method": "/pkg.Service/Method", "protocol":
"grpc", "code": "ok", "duration_ms": 1.84, "request_id": "4bf9...", "peer":
"127.0.0.1", "principal": "ci", "messages_received": 1, "messages_sent": 1}``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from connect_proto._context import RequestContext
from connect_proto._hooks import CallOutcome
from connect_proto._service import RpcRoute

ACCESS_LOGGER = "connect_proto.access"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Marks the handler configure_logging installed, so calling it again replaces it.
_OURS = "_connect_proto_handler"


def configure_logging(
    fmt: Literal["plain", "json"] = "plain",
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """RpcRoute the root logger to ``stream`` (stderr) in the given format; idempotent."""
    if fmt not in ("plain", "json"):
        raise ValueError(f"log format must be 'plain' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _OURS, False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


class AccessLog:
    """The access-log observer: one record per finished call, at ``ok_level`` (DEBUG
    unless told otherwise) for a call that succeeded and at INFO for one that did not.

    Writing a record costs about as much as serving a small call, so by default only the
    calls worth a look reach an INFO log; ``ok_level=logging.INFO`` (or the logger at
    DEBUG) logs every call."""

    def __init__(self, logger: logging.Logger | None = None, *, ok_level: int = logging.DEBUG):
        self._log = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)
        self._ok_level = ok_level

    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        pass

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        log = self._log
        level = self._ok_level if outcome.code is None else logging.INFO
        if not log.isEnabledFor(level):
            return  # formatting costs more than the call itself on a fast path
        ms = round(outcome.duration * 1000, 3)
        peer = ctx.peer[0] if ctx.peer else "-"
        log.log(
            level,
            "%s %s %s %.2fms id=%s peer=%s principal=%s in=%d out=%d",
            route.path,
            ctx.protocol,
            outcome.code_name,
            ms,
            ctx.request_id or "-",
            peer,
            ctx.principal or "-",
            outcome.messages_received,
            outcome.messages_sent,
            extra={
                "method": route.path,
                "protocol": ctx.protocol,
                "code": outcome.code_name,
                "duration_ms": ms,
                "request_id": ctx.request_id or None,
                "peer": peer,
                "principal": ctx.principal,
                "messages_received": outcome.messages_received,
                "messages_sent": outcome.messages_sent,
            },
        )


__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "configure_logging"]
