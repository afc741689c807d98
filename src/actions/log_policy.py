"""What the server's log shows an operator: one line per problem, not a flood.

Two filters for the log handler ``actions-service serve`` installs:

- ``TracebacksAtDebug``: a record logged with a traceback (``log.exception``) keeps
  its message and gains the exception's one-line summary; the traceback itself is
  printed only when the log level is DEBUG.
- ``RepeatLimiter``: a warning or error that repeats (same logger, level and text) is
  shown once per ``window`` seconds; the next one shown says how many
  were left out. A failure that recurs every second (a change stream restarting on a
  broken store, a watch retrying an API server) then costs one line a minute.

And ``Outage``, for the code that retries: it logs when a failure starts, at most once
per ``every`` seconds while it goes on (with a count), and once when it is over.

One cause, one line: the code that finds a failure's cause logs it and marks the
exception it raises (``mark_logged``); code further up that sees the same exception
(a change stream restarted on it, say) logs it at DEBUG only (``is_logged``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

DEFAULT_WINDOW: Final = 60.0
MAX_REMEMBERED: Final = 1000  # distinct lines remembered for the window


def exception_summary(exc: BaseException) -> str:
    """``Type: message``; an exception group lists its leaves, ``; ``-separated."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(exception_summary(inner) for inner in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_LOGGED: Final = "_actions_cause_logged"


def mark_logged(exc: BaseException) -> None:
    """Say that ``exc``'s cause has been logged already, by the code that raises it."""
    setattr(exc, _LOGGED, True)


def is_logged(exc: BaseException) -> bool:
    """Whether ``exc``'s cause was logged where it was found (a group: every leaf's)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_logged(inner) for inner in exc.exceptions)
    return getattr(exc, _LOGGED, False) is True


class TracebacksAtDebug(logging.Filter):
    """Drops tracebacks from records unless ``debug()`` says DEBUG logging is on."""

    def __init__(self, debug: Callable[[], bool]) -> None:
        super().__init__()
        self._debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and not self._debug():
            summary = exception_summary(record.exc_info[1])
            record.msg = f"{record.getMessage()}: {summary}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class RepeatLimiter(logging.Filter):
    """Shows a repeating warning (or worse) once per ``window`` seconds."""

    def __init__(
        self, window: float = DEFAULT_WINDOW, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        # (logger, level, text) -> (when last shown, how many left out since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        shown = self._seen.get(key)
        if shown is not None and now - shown[0] < self._window:
            self._seen[key] = (shown[0], shown[1] + 1)
            return False
        if len(self._seen) >= MAX_REMEMBERED:
            self._forget(now)
        self._seen[key] = (now, 0)
        if shown is not None and shown[1]:
            left_out = f"{shown[1]} more like it in the last {now - shown[0]:.0f}s"
            record.msg = f"{record.getMessage()} ({left_out})"
            record.args = None
        return True

    def _forget(self, now: float) -> None:
        """Drop what is older than the window (distinct lines must not grow memory)."""
        for key, (shown, _) in list(self._seen.items()):
            if now - shown >= self._window:
                del self._seen[key]
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()


class Outage:
    """One problem that may last (a missing resource, a failing change stream), as the
    retrying code sees it: ``failed()`` on every failure, ``recovered()`` on success.

    The first failure is one line at ``level`` (the exception's traceback, when given,
    only at DEBUG); repeats are counted and summed up at most every ``every`` seconds
    (``... (still failing: N more in Ts)``); ``recovered()`` logs one INFO line saying how
    many failures it ended, and nothing when there was no outage.

    A failure whose exception says its cause was logged already (``is_logged``) is
    logged at DEBUG only; if every failure of an outage was such, so is its end."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        level: int = logging.ERROR,
        every: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._level = level
        self._every = every
        self._clock = clock
        self.failures = 0  # in the current outage; 0: none
        self._announced = False  # a failure of this outage was logged at ``level``
        self._logged_at = 0.0
        self._unlogged = 0

    @property
    def active(self) -> bool:
        return self.failures > 0

    def failed(self, message: str, exc: BaseException | None = None) -> None:
        now = self._clock()
        self.failures += 1
        debug = self._log.isEnabledFor(logging.DEBUG)
        exc_info = exc if (exc is not None and debug) else None
        if exc is not None and is_logged(exc):
            if debug:
                self._log.debug("%s (cause logged already)", message, exc_info=exc_info)
            return
        if not self._announced:
            self._log.log(self._level, "%s", message, exc_info=exc_info)
            self._announced = True
            self._logged_at, self._unlogged = now, 0
            return
        self._unlogged += 1
        if now - self._logged_at >= self._every:
            self._log.log(self._level, "%s (still failing: %d more in %.0fs)", message,
                          self._unlogged, now - self._logged_at)  # fmt: skip
            self._logged_at, self._unlogged = now, 0
        elif debug:
            self._log.debug("again: %s", message, exc_info=exc_info)

    def recovered(self, message: str) -> bool:
        """Log ``message`` with the count of failures, if there was an outage; True if so."""
        if not self.failures:
            return False
        level = logging.INFO if self._announced else logging.DEBUG
        self._log.log(level, "%s after %d failures", message, self.failures)
        self.failures = 0
        self._announced = False
        return True


# Libraries that log every retry of a request the store then reports as one failure.
RETRY_LOGGERS: Final = ("urllib3.connectionpool",)


def install(handler: logging.Handler, *, window: float = DEFAULT_WINDOW) -> None:
    """Both filters on ``handler``; DEBUG is judged from the root logger's level. Below
    DEBUG, the HTTP client's per-retry warnings are left out too: the Kubernetes store
    says once that the API server is unreachable, naming it."""
    root = logging.getLogger()
    if not root.isEnabledFor(logging.DEBUG):
        for name in RETRY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    handler.addFilter(RepeatLimiter(window))  # first: the traceback summary varies
    handler.addFilter(TracebacksAtDebug(lambda: root.isEnabledFor(logging.DEBUG)))


__all__ = [
    "Outage",
    "RepeatLimiter",
    "TracebacksAtDebug",
    "exception_summary",
    "install",
    "is_logged",
    "mark_logged",
]
