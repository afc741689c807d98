"""Fault knobs shared by the HTTP layer, watch streams and the garbage collector.

Tests drive them through :class:`Faults` (in-process) or ``/_emulator/faults`` (subprocess);
both end up here. Everything is guarded by one small lock and read per request.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ErrorRule:
    """Answer matching requests with ``status`` for ``count`` requests or until ``until``."""

    status: int = 500
    count: int | None = 1
    until: float | None = None  # time.monotonic() deadline
    path: str | None = None  # regular expression searched in the request path
    verbs: frozenset[str] | None = None  # HTTP methods, upper case
    retry_after: int | None = None
    plain: bool = False  # 429 the way flow control sends it: text/plain, not a Status
    message: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str, now: float) -> bool:
        if self.expired(now):
            return False
        if self.verbs is not None and method.upper() not in self.verbs:
            return False
        return self.path is None or re.search(self.path, path) is not None

    def expired(self, now: float) -> bool:
        return (self.count is not None and self.count <= 0) or (
            self.until is not None and now >= self.until
        )

    def describe(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "count": self.count,
            "secondsLeft": None if self.until is None else max(0.0, self.until - time.monotonic()),
            "path": self.path,
            "verbs": sorted(self.verbs) if self.verbs else None,
            "retryAfter": self.retry_after,
            "plain": self.plain,
            "hits": self.hits,
        }


@dataclass
class Faults:
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    rules: list[ErrorRule] = field(default_factory=list)
    latency: float = 0.0
    latency_path: str | None = None
    watch_close_after: int | None = None  # events per watch stream, then the stream ends
    watch_close_abrupt: bool = False  # end without the final chunk (a network fault)
    close_generation: int = 0  # bumped by close_watches(): every open stream ends
    close_abrupt: bool = False
    bookmark_generation: int = 0  # bumped by send_bookmarks()
    gc_paused: bool = False
    gc_delay: float = 0.0

    # --- request errors ---------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        path: str | None = None,
        verbs: list[str] | None = None,
        retry_after: int | None = None,
        plain: bool = False,
        message: str | None = None,
    ) -> ErrorRule:
        """Answer the next ``count`` matching requests with ``status``."""
        return self._add(
            ErrorRule(status, count, None, path, _verbs(verbs), retry_after, plain, message)
        )

    def fail_for(
        self,
        seconds: float,
        status: int = 500,
        *,
        path: str | None = None,
        verbs: list[str] | None = None,
        retry_after: int | None = None,
        plain: bool = False,
        message: str | None = None,
    ) -> ErrorRule:
        """Answer every matching request with ``status`` for ``seconds``."""
        until = time.monotonic() + seconds
        return self._add(
            ErrorRule(status, None, until, path, _verbs(verbs), retry_after, plain, message)
        )

    def _add(self, rule: ErrorRule) -> ErrorRule:
        if rule.status == 429 and rule.retry_after is None:
            rule.retry_after = 1
        with self.lock:
            self.rules.append(rule)
        return rule

    def take_error(self, method: str, path: str) -> ErrorRule | None:
        now = time.monotonic()
        with self.lock:
            self.rules = [r for r in self.rules if not r.expired(now)]
            for rule in self.rules:
                if rule.matches(method, path, now):
                    if rule.count is not None:
                        rule.count -= 1
                    rule.hits += 1
                    return rule
        return None

    def delay_for(self, path: str) -> float:
        with self.lock:
            if self.latency and (self.latency_path is None or re.search(self.latency_path, path)):
                return self.latency
        return 0.0

    # --- other knobs --------------------------------------------------------------------

    def set_latency(self, seconds: float, path: str | None = None) -> None:
        with self.lock:
            self.latency, self.latency_path = seconds, path

    def close_watches_after(self, events: int | None, *, abrupt: bool = False) -> None:
        with self.lock:
            self.watch_close_after, self.watch_close_abrupt = events, abrupt

    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
            self.latency, self.latency_path = 0.0, None
            self.watch_close_after, self.watch_close_abrupt = None, False
            self.gc_paused, self.gc_delay = False, 0.0

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "rules": [r.describe() for r in self.rules],
                "latency": self.latency,
                "latencyPath": self.latency_path,
                "watchCloseAfter": self.watch_close_after,
                "watchCloseAbrupt": self.watch_close_abrupt,
                "gcPaused": self.gc_paused,
                "gcDelay": self.gc_delay,
            }

    def configure(self, spec: dict[str, Any]) -> None:
        """Apply the JSON document POSTed to ``/_emulator/faults``.

        Keys (all optional): ``errors`` (list of {status, count | seconds, path, verbs,
        retryAfter, plain, message}), ``latency`` (seconds), ``latencyPath``,
        ``watchCloseAfter`` (events or null), ``watchCloseAbrupt``, ``gcPaused``, ``gcDelay``,
        ``reset`` (true clears everything first).
        """
        if spec.get("reset"):
            self.reset()
        for item in spec.get("errors") or []:
            kwargs = {
                "status": int(item.get("status", 500)),
                "path": item.get("path"),
                "verbs": item.get("verbs"),
                "retry_after": item.get("retryAfter"),
                "plain": bool(item.get("plain", False)),
                "message": item.get("message"),
            }
            if "seconds" in item:
                self.fail_for(float(item["seconds"]), **kwargs)
            else:
                self.fail_next(int(item.get("count", 1)), **kwargs)
        if "latency" in spec:
            self.set_latency(float(spec["latency"] or 0), spec.get("latencyPath"))
        if "watchCloseAfter" in spec:
            self.close_watches_after(
                spec["watchCloseAfter"], abrupt=bool(spec.get("watchCloseAbrupt", False))
            )
        with self.lock:
            if "gcPaused" in spec:
                self.gc_paused = bool(spec["gcPaused"])
            if "gcDelay" in spec:
                self.gc_delay = float(spec["gcDelay"] or 0)


def _verbs(verbs: list[str] | None) -> frozenset[str] | None:
    return frozenset(v.upper() for v in verbs) if verbs else None
