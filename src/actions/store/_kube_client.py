"""Kubernetes client plumbing: configuration, client-side rate limiting, error mapping.

All of it is synchronous and thread-safe; the Kubernetes backend calls it from worker
threads only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from actions.store.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
    TooLarge,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach the API server and how hard to push it.

    ``kubeconfig``/``context`` select a kubeconfig file and context; ``in_cluster=None``
    uses the service-account configuration when running in a pod (and no kubeconfig was
    given), a kubeconfig otherwise. ``qps``/``burst`` is client-go's token bucket.
    ``connect_timeout``/``request_timeout`` bound every non-watch request;
    ``watch_timeout`` is the server-side lifetime of one watch request (it is re-issued,
    resuming from the last resourceVersion, when it ends).
    """

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool | None = None
    qps: float = 50.0
    burst: int = 100
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    watch_timeout: int = 300
    max_concurrent_requests: int = 8

    @property
    def timeouts(self) -> tuple[float, float]:
        return (self.connect_timeout, self.request_timeout)

    @property
    def watch_read_timeout(self) -> tuple[float, float]:
        # Longer than the server-side timeout (and the ~1 min bookmark interval), so a
        # silent half-dead connection is noticed without cutting healthy streams short.
        return (self.connect_timeout, self.watch_timeout + 30.0)


def load_configuration(settings: ClientSettings) -> client.Configuration:
    """Blocking (reads files): call from a worker thread."""
    configuration = client.Configuration()
    in_cluster = settings.in_cluster
    if in_cluster is None:
        in_cluster = settings.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=settings.kubeconfig,
                context=settings.context,
                client_configuration=configuration,
            )
    except config.ConfigException as exc:
        raise StoreUnavailable(f"no usable Kubernetes configuration: {exc}") from exc
    # One pooled connection per concurrent request, plus the watch's own.
    configuration.connection_pool_maxsize = settings.max_concurrent_requests + 1
    return configuration


class TokenBucket:
    """client-go's rate limiter: ``qps`` tokens a second, at most ``burst`` saved up.

    ``reserve()`` takes a token now and returns how long the caller must wait before using
    it, so trio callers can ``await trio.sleep`` and threads can ``time.sleep``.
    """

    def __init__(self, qps: float, burst: int) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be positive and burst at least 1")
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self._qps


class Backoff:
    """Exponential backoff with full jitter, for the watch thread's reconnects."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0) -> None:
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._maximum, self._initial * (2**self._attempt))
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)


def _status(exc: ApiException) -> tuple[dict[str, Any], str | None]:
    """The Status object of an error body, and the body's text when it is not JSON at all
    (the body is bytes before client v37, str after)."""
    raw: object = exc.body
    body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return {}, body
    return (parsed if isinstance(parsed, dict) else {}), None


def status_reason(exc: ApiException) -> str:
    """The Status ``reason`` of an error body ("" when there is none)."""
    return str(_status(exc)[0].get("reason", ""))


def status_message(exc: ApiException) -> str:
    status, text = _status(exc)
    if text is not None:
        return str(text or exc.reason)
    if status.get("message"):
        return str(status["message"])
    return str(exc.reason)


# How an API server says an object can never be stored, whatever the HTTP code: etcd's
# own limit (--max-request-bytes, "etcdserver: request is too large") and the etcd
# client's gRPC limit ("trying to send message larger than max (N vs. 2097152)", or
# "received message larger than max" from etcd's side) reach the client as a 500 with
# etcd's text as the Status message (kubernetes/kubernetes#112152).
_TOO_LARGE_MESSAGES = ("request is too large", "message larger than max")


def translate(exc: BaseException) -> StoreError | None:
    """The store error for a client failure, or None if it is not one."""
    if isinstance(exc, ApiException):
        message = status_message(exc)
        status = exc.status
        if status == 413 or any(text in message for text in _TOO_LARGE_MESSAGES):
            # Body over the API server's 3 MiB (413 RequestEntityTooLarge), or an object
            # etcd will not take: no retry can help.
            return TooLarge(f"API server answered {status}: {message}")
        if status == 404:
            return NotFound(message)
        if status == 409:
            # AlreadyExists and Conflict share the code; only the body tells them apart.
            if status_reason(exc) == "AlreadyExists":
                return AlreadyExists(message)
            return Conflict(message)
        if status == 410:
            return Gone(message)
        if status in (400, 422):
            return Invalid(message)
        return StoreUnavailable(f"API server answered {status}: {message}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return StoreUnavailable(f"API server unreachable: {exc}")
    return None


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one client call, raising store errors instead of client ones."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc


def ensure_namespace(
    api_client: client.ApiClient, namespace: str, create: bool, timeouts: tuple[float, float]
) -> None:
    """Check once at start-up that the namespace exists; create it if missing and allowed."""
    core = client.CoreV1Api(api_client)
    try:
        core.read_namespace(namespace, _request_timeout=timeouts)
        return
    except ApiException as exc:
        if exc.status == 403:
            # A namespaced Role may not read namespaces; the first list will tell.
            log.info("may not read namespace %s; assuming it exists", namespace)
            return
        if exc.status != 404:
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc
    if not create:
        raise StoreUnavailable(f"namespace {namespace!r} does not exist")
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)),
            _request_timeout=timeouts,
        )
        log.info("created namespace %s", namespace)
    except ApiException as exc:
        if exc.status != 409:  # someone else created it meanwhile: fine
            raise StoreUnavailable(
                f"namespace {namespace!r} does not exist and could not be created: "
                f"{status_message(exc)}"
            ) from exc
