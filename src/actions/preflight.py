"""Start-up checks: can this configuration work here? Asked before anything is created.

``actions-service serve`` binds its port, then checks the store's location, then opens
the store, then serves; each step that fails raises ``StartupError``, one line naming
the thing (the port, the data directory or database file, the API server, the CRD, the
namespace) and the cause. Nothing is created before the port is bound and the data
directory is known to be usable.

Also the translation of store-opening failures: the store raises what SQLite, the file
system or the Kubernetes client raised; ``describe_open_error`` says it in the
operator's terms (read-only, permission denied, corrupt).
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any, Final

from actions.store.errors import StoreError

SQLITE_HEADER: Final = b"SQLite format 3\x00"
CRD_NAME: Final = "taskactions.flyte.org"
TRACE_CRD_PLURAL: Final = "actiontraces"
TRACE_CRD_NAME: Final = "actiontraces.flyte.org"
CRD_GROUP: Final = "flyte.org"
CRD_VERSION: Final = "v1"
CRD_PLURAL: Final = "taskactions"


class StartupError(Exception):
    """The configuration cannot work here; the message names what and why, in one line."""


# --------------------------------------------------------------------------- the port


def _bind_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    return exc.strerror or str(exc)


def bind_error(host: str, port: int, exc: OSError) -> StartupError:
    """``cannot listen on 127.0.0.1:8091: address already in use ...``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    host_problem = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
    key = "actions.server.host" if host_problem else "actions.server.port"
    return StartupError(f"{key}: cannot listen on {where}: {_bind_reason(exc)}")


# --------------------------------------------------------------------------- the data directory


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _why_not_writable(directory: Path) -> str:
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return "permission denied"
    if vfs.f_flag & os.ST_RDONLY:
        return "read-only file system"
    return "permission denied"


def check_data_dir(data_dir: Path, database: Path) -> None:
    """The embedded store can create or open ``database`` in ``data_dir``; checked without
    creating anything. Missing directories are fine (they are created, as ``mkdir -p``
    would) when the nearest existing one is a writable directory.

    A zero-byte database file is what SQLite itself creates before the first write, so
    it is accepted as a new, empty store. Any other file that does not start with the
    SQLite header is refused as not a database (corrupt, or someone else's file).
    """
    key = "actions.dataDir"
    existing = _nearest_existing(data_dir)
    if existing != data_dir:
        if not existing.is_dir():
            raise StartupError(f"{key}: cannot create {data_dir}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StartupError(
                f"{key}: cannot create {data_dir} in {existing}: {_why_not_writable(existing)}"
            )
        return
    if not data_dir.is_dir():
        raise StartupError(f"{key}: {data_dir} is not a directory")
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(f"{key}: {data_dir} is not usable: {_why_not_writable(data_dir)}")
    if not os.path.lexists(database):
        return
    if not database.is_file():
        raise StartupError(f"{key}: database {database} is not a regular file")
    if not os.access(database, os.R_OK | os.W_OK):
        reason = _why_not_writable(data_dir)
        raise StartupError(f"{key}: database {database} is not writable: {reason}")
    try:
        with database.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StartupError(f"{key}: cannot read database {database}: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise StartupError(
            f"{key}: {database} is not an SQLite database (corrupt, or another program's "
            "file); move it away to start with an empty store"
        )


def describe_open_error(database: Path, exc: BaseException) -> str:
    """Why the embedded store could not open ``database``, in the operator's terms."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, OSError):
        reason = exc.strerror or text
        if exc.errno == errno.EROFS:
            reason = "read-only file system"
        return f"actions.dataDir: cannot open database {database}: {reason}"
    if "readonly" in lowered or "read-only" in lowered:
        reason = "read-only (file system or file permissions)"
    elif "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
        reason = "the database is corrupt"
    elif "unable to open" in lowered or "cannot open" in lowered:
        reason = "cannot open the file (permissions, or a missing or read-only directory)"
    elif "disk is full" in lowered or "disk i/o" in lowered:
        reason = "disk full or I/O error"
    elif "locked" in lowered:
        reason = "locked by another process"
    else:
        reason = "cannot open"
    if isinstance(exc, sqlite3.Error | StoreError):
        return f"actions.dataDir: database {database}: {reason} ({text})"
    return f"actions.dataDir: database {database}: {reason} ({type(exc).__name__}: {text})"


# --------------------------------------------------------------------------- Kubernetes


def kube_context_name(kubeconfig: str | None, context: str | None) -> str:
    """The kubeconfig context that will be used (the named one, else the current one)."""
    if context:
        return context
    from kubernetes import config as kube_config

    try:
        _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:  # the loader says what is wrong with the file; here a name suffices
        return "(current context)"
    return str((active or {}).get("name") or "(current context)")


def check_kubernetes(
    host: str,
    api_client: object,
    namespace: str,
    timeouts: tuple[float, float],
) -> str | None:
    """Blocking (a worker thread): the API server at ``host`` serves the TaskAction CRD
    and ``namespace`` exists. Raises StartupError when the server answers that either
    is missing (or refuses the credentials); returns why it could not tell (the server
    is unreachable or failing: the service then starts and is not ready until it
    answers), or None when all is well. Never creates anything."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    where = f"API server {host}"
    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources(
            CRD_GROUP, CRD_VERSION, _request_timeout=timeouts
        )
    except ApiException as exc:
        if exc.status != 404:
            return _unclear_answer(exc, where)
        resources = None
    except Exception as exc:  # urllib3 or OSError: not reachable; the store retries
        return f"{where} unreachable: {_transport_reason(exc)}"
    served = set() if resources is None else {r.name for r in resources.resources or []}
    if CRD_PLURAL not in served:
        raise StartupError(
            f"CRD {CRD_NAME} is not installed on {where} (apply k8s/crd.yaml, or check "
            "actions.kubernetes.context)"
        )
    if TRACE_CRD_PLURAL not in served:
        # Next to Flyte, whose chart installs the TaskAction CRD, only the trace kind
        # may be missing.
        raise StartupError(
            f"CRD {TRACE_CRD_NAME} is not installed on {where} (apply the TraceAction "
            "document of k8s/crd.yaml, or check actions.kubernetes.context)"
        )
    try:
        client.CoreV1Api(api_client).read_namespace(namespace, _request_timeout=timeouts)
    except ApiException as exc:
        if exc.status != 404:
            return _unclear_answer(exc, where)
        raise StartupError(
            f"actions.kubernetes.namespace: namespace {namespace!r} does not exist on "
            f"{where} (the service never creates namespaces)"
        ) from None
    except Exception as exc:
        return f"{where} unreachable: {_transport_reason(exc)}"
    return None


def _transport_reason(exc: BaseException) -> str:
    """urllib3 wraps the cause in MaxRetryError(reason=...); the cause says it best."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        text = str(reason)
        # "HTTPConnection(host=..., port=...): Failed to establish ...": keep the cause.
        return text.split("): ", 1)[-1] if "): " in text else text
    return f"{type(exc).__name__}: {exc}"


def _unclear_answer(exc: Any, where: str) -> str | None:
    if exc.status == 401:
        raise StartupError(f"{where} refused the credentials (401 Unauthorized)")
    if exc.status == 403:
        return None  # may not read this (a namespaced Role); the first list will tell
    return f"{where} answered {exc.status}: {exc.reason}"


__all__ = [
    "CRD_NAME",
    "StartupError",
    "bind_error",
    "check_data_dir",
    "check_kubernetes",
    "describe_open_error",
    "kube_context_name",
]
