"""HTTP/1.1 request handling: decoding, fault injection, dispatch, responses.

One handler instance serves one persistent connection (``protocol_version = "HTTP/1.1"``).
Non-streaming responses always carry Content-Length; watches use chunked encoding with one
JSON event per chunk, flushed at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import yaml

from . import discovery, errors, openapi, tables
from .deleteoptions import parse_bool, parse_delete_options
from .errors import StatusError
from .patching import APPLY_PATCH
from .routing import ResourcePath, resolve
from .selectors import (
    NAMESPACE_FIELD_GETTERS,
    FieldSelector,
    parse_field_selector,
    parse_label_selector,
)
from .store import WriteOptions, parse_rv
from .watch import AbortStream, WatchRequest, WatchSession

if TYPE_CHECKING:
    from .emulator import Core
    from .server import ApiServer

JSON = "application/json"

log = logging.getLogger("kube_emulator.requests")


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-emulator"
    sys_version = ""
    # Headers and body leave in separate writes; with Nagle on, every request on a kept-alive
    # connection would wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True

    server: ApiServer  # the server that accepted this connection (narrowed for typing)

    @property
    def core(self) -> Core:
        return self.server.core

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests go to Core.requests and, at DEBUG, to the "kube_emulator" logger

    # --- verbs ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # --- plumbing -------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body; None when it is over ``MAX_REQUEST_BODY_BYTES``. An oversized
        body is still read to its end (and dropped) so the connection stays usable and the
        client, still sending, sees the 413 rather than a reset."""
        limit = errors.MAX_REQUEST_BODY_BYTES
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self.rfile.read(size)
                total += len(chunk)
                if total <= limit:
                    chunks.append(chunk)
                self.rfile.readline()
            return b"".join(chunks) if total <= limit else None
        length = int(self.headers.get("Content-Length") or 0)
        if length <= limit:
            return self.rfile.read(length) if length else b""
        while length > 0:
            got = len(self.rfile.read(min(length, 1 << 16)))
            if not got:
                break
            length -= got
        return None

    def _send_bytes(
        self, code: int, payload: bytes, content_type: str, headers: dict[str, Any] | None = None
    ) -> None:
        # Record the status before any byte goes out: a client that has read this answer
        # may look at the request log at once (tests do).
        self._status = code
        record = getattr(self, "_record", None)  # None before the first request's log entry
        if record is not None:
            record[2] = code
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        if self.close_connection:
            self.send_header("Connection", "close")  # the client asked to close
        for key, value in (headers or {}).items():
            for item in value if isinstance(value, list) else [value]:
                self.send_header(key, item)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(
        self,
        code: int,
        body: Any,
        headers: dict[str, Any] | None = None,
        *,
        content_type: str = JSON,
    ) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self._send_bytes(code, payload, content_type, headers)

    def _send_status(self, err: StatusError) -> None:
        headers = {}
        if err.retry_after:
            headers["Retry-After"] = str(err.retry_after)
        body = err.to_status()
        if not err.reason:
            body.pop("reason", None)
        self._send_json(err.code, body, headers)

    def _send_plain_404(self) -> None:
        self._send_bytes(
            404,
            errors.PLAIN_404,
            "text/plain; charset=utf-8",
            {"X-Content-Type-Options": "nosniff"},
        )

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._status = 0
        self._record: list[Any] | None = None  # this request's log entry, once made
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        core = self.core
        record = self._record = core.log_request(self.command, self.path)
        try:
            if body is None:
                raise errors.request_entity_too_large()
            if path.startswith("/_emulator/"):
                self._admin(path, body)
                return
            delay = core.faults.delay_for(path)
            if delay and core.stopping.wait(delay):
                self.close_connection = True
                return
            rule = core.faults.take_error(self.command, path)
            if rule is not None:
                self._inject(rule)
                return
            self._route(path, query, body)
        except StatusError as err:
            self._send_status(err)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # a bug in the emulator: answer like apiserver does
            traceback.print_exc(file=sys.stderr)
            self._send_status(errors.internal_error(f"emulator bug: {exc!r}"))
        finally:
            record[2], record[3] = self._status, time.monotonic() - started
            log.debug(
                "%s %s -> %s in %.1f ms",
                self.command,
                self.path,
                self._status or "-",
                record[3] * 1000,
            )

    def _inject(self, rule: Any) -> None:
        # Retry-After 0 is meaningful to urllib3 (retry at once), so test "is not None".
        headers = {} if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
        if rule.status == 429 and rule.plain:
            self._send_bytes(429, errors.PLAIN_429, "text/plain; charset=utf-8", headers)
            return
        err = errors.injected(rule.status, rule.message, rule.retry_after)
        body = err.to_status()
        self._send_json(err.code, body, headers)

    # --- decoding -------------------------------------------------------------------

    def _content_type(self) -> str:
        raw = self.headers.get("Content-Type") or JSON
        return raw.split(";")[0].strip().lower()

    def _decode(self, body: bytes) -> Any:
        if not body.strip():
            return None
        ctype = self._content_type()
        if "protobuf" in ctype or "cbor" in ctype:
            # Built-in kinds accept protobuf upstream (kubectl create namespace sends it);
            # the emulator speaks JSON and YAML only, and says so.
            raise errors.unsupported_body_encoding(ctype)
        try:
            if "yaml" in ctype:
                return yaml.safe_load(body)
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"error decoding request body: {exc}") from None

    # --- routing --------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str], body: bytes) -> None:
        core = self.core
        if self.command in ("GET", "HEAD") and self._discovery(path):
            return
        route = resolve(core.registry, path)
        if route is None:
            self._send_plain_404()
            return
        method = "GET" if self.command == "HEAD" else self.command  # HEAD: GET without body
        if route.subresource is not None:
            self._subresource(route, method, query, body)
        elif route.name is None:
            self._collection(route, method, query, body)
        else:
            self._object(route, method, query, body)

    def _discovery(self, path: str) -> bool:
        core = self.core
        path = path.rstrip("/") or "/"
        doc: Any = None
        if path == "/version":
            doc = discovery.version_doc(*core.server_version)
        elif path == "/api":
            doc = discovery.api_versions(f"{core.host}:{core.port}")
        elif path == "/api/v1":
            doc = discovery.api_resource_list(core.registry, "", "v1")
        elif path == "/apis":
            doc = discovery.api_group_list(core.registry)
        elif path == "/openapi/v2":
            accept = self.headers.get("Accept") or ""
            if openapi.V2_PROTOBUF_ACCEPT in accept or openapi.V2_PROTOBUF in accept:
                self._send_bytes(200, openapi.v2_protobuf(core.registry), openapi.V2_PROTOBUF)
                return True
            doc = openapi.v2_json(core.registry)
        elif path == "/openapi/v3":
            doc = openapi.v3_root(core.registry)
        elif path.startswith("/openapi/v3/"):
            parts = path[len("/openapi/v3/") :].split("/")
            if parts[:1] == ["api"] and len(parts) == 2:
                doc = openapi.v3_group_version(core.registry, "", parts[1])
            elif parts[:1] == ["apis"] and len(parts) == 3:
                doc = openapi.v3_group_version(core.registry, parts[1], parts[2])
            if doc is None:
                self._send_plain_404()
                return True
        elif path in ("/healthz", "/readyz", "/livez"):
            self._send_bytes(200, b"ok", "text/plain; charset=utf-8")
            return True
        elif path.startswith("/apis/"):
            parts = path.split("/")[2:]
            if len(parts) == 1:
                doc = discovery.api_group(core.registry, parts[0])
            elif len(parts) == 2:
                doc = discovery.api_resource_list(core.registry, parts[0], parts[1])
            else:
                return False
            if doc is None:
                self._send_plain_404()
                return True
        else:
            return False
        self._send_json(200, doc)
        return True

    def _write_options(self, query: dict[str, str]) -> WriteOptions:
        # The server's default is Warn; kubectl sends Strict, the Python client nothing.
        directive = query.get("fieldValidation") or "Warn"
        if directive not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(
                f"fieldValidation must be one of Ignore, Warn or Strict, got {directive!r}"
            )
        return WriteOptions(dry_run=query.get("dryRun") == "All", field_validation=directive)

    def _warning_headers(self, opts: WriteOptions) -> dict[str, Any]:
        if not opts.warnings:
            return {}
        # apiserver sends one Warning header per warning (RFC 7234 warn-code 299).
        return {"Warning": [f'299 - "{_quote(w)}"' for w in opts.warnings]}

    def _collection(
        self, route: ResourcePath, method: str, query: dict[str, str], body: bytes
    ) -> None:
        store = self.core.store
        rtype = route.rtype
        if method == "GET":
            watching = parse_bool(query.get("watch", "false") or "false")
            if watching and self.command == "GET":
                self._watch(route, query)
                return
            if query.get("sendInitialEvents"):
                raise errors.invalid_list_options(
                    errors.forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
                )
            limit = _int_param(query, "limit")
            result = store.list(
                rtype,
                route.namespace,
                labels=parse_label_selector(query.get("labelSelector")),
                fields=self._fields(route, query),
                resource_version=query.get("resourceVersion"),
                rv_match=query.get("resourceVersionMatch") or None,
                limit=limit,
                continue_token=query.get("continue") or None,
            )
            if tables.wants_table(self.headers.get("Accept")):
                table = tables.to_table(rtype, route.version, result["items"], result["metadata"])
                self._send_json(200, table, content_type=tables.TABLE_CONTENT_TYPE)
                return
            self._send_json(200, _present_list(result, route))
        elif method == "POST" and not route.all_namespaces:
            opts = self._write_options(query)
            obj = store.create(
                rtype, route.namespace, self._decode(body), version=route.version, opts=opts
            )
            self._send_json(201, _present(obj, route), self._warning_headers(opts))
        elif method == "DELETE" and not route.all_namespaces:
            options = parse_delete_options(self._decode(body), query)
            result = store.delete_collection(
                rtype,
                route.namespace,
                labels=parse_label_selector(query.get("labelSelector")),
                fields=self._fields(route, query),
                options=options,
            )
            self._send_json(200, _present_list(result, route))
        else:
            raise errors.method_not_allowed(method, rtype.qualified)

    def _fields(self, route: ResourcePath, query: dict[str, str]) -> FieldSelector:
        getters = NAMESPACE_FIELD_GETTERS if route.rtype.plural == "namespaces" else None
        return parse_field_selector(query.get("fieldSelector"), getters)

    def _object(self, route: ResourcePath, method: str, query: dict[str, str], body: bytes) -> None:
        store = self.core.store
        rtype, ns, name = route.rtype, route.namespace, route.name or ""
        if method == "GET":
            obj = store.get(rtype, ns, name)
            if tables.wants_table(self.headers.get("Accept")):
                table = tables.to_table(
                    rtype,
                    route.version,
                    [obj],
                    {"resourceVersion": obj["metadata"]["resourceVersion"]},
                )
                self._send_json(200, table, content_type=tables.TABLE_CONTENT_TYPE)
                return
            self._send_json(200, _present(obj, route))
        elif method == "PUT":
            opts = self._write_options(query)
            obj = store.update(
                rtype, ns, name, self._decode(body), version=route.version, opts=opts
            )
            self._send_json(200, _present(obj, route), self._warning_headers(opts))
        elif method == "PATCH":
            self._patch(route, query, body, None)
        elif method == "DELETE":
            options = parse_delete_options(self._decode(body), query)
            code, result = store.delete(rtype, ns, name, options)
            if result.get("kind") != "Status":
                result = _present(result, route)
            self._send_json(code, result)
        else:
            raise errors.method_not_allowed(method, rtype.qualified)

    def _patch(
        self, route: ResourcePath, query: dict[str, str], body: bytes, sub: str | None
    ) -> None:
        ctype = self._content_type()
        if ctype == APPLY_PATCH:
            # Server-side apply is not emulated; refuse it loudly instead of mis-applying.
            raise errors.unsupported_media_type(ctype)
        try:
            patch_body = json.loads(body) if body.strip() else None
        except ValueError as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from None
        opts = self._write_options(query)
        obj = self.core.store.patch(
            route.rtype,
            route.namespace,
            route.name or "",
            ctype,
            patch_body,
            subresource=sub,
            version=route.version,
            opts=opts,
        )
        self._send_json(200, _present(obj, route), self._warning_headers(opts))

    def _subresource(
        self, route: ResourcePath, method: str, query: dict[str, str], body: bytes
    ) -> None:
        rtype = route.rtype
        if route.subresource != "status" or not rtype.status_subresource:
            raise errors.subresource_not_found()
        store = self.core.store
        if method == "GET":
            self._send_json(
                200, _present(store.get(rtype, route.namespace, route.name or ""), route)
            )
        elif method == "PUT":
            opts = self._write_options(query)
            obj = store.update(
                rtype,
                route.namespace,
                route.name or "",
                self._decode(body),
                subresource="status",
                version=route.version,
                opts=opts,
            )
            self._send_json(200, _present(obj, route), self._warning_headers(opts))
        elif method == "PATCH":
            self._patch(route, query, body, "status")
        else:
            raise errors.method_not_allowed(method, rtype.qualified)

    # --- watch ----------------------------------------------------------------------

    def _watch(self, route: ResourcePath, query: dict[str, str]) -> None:
        core = self.core
        timeout = query.get("timeoutSeconds")
        req = WatchRequest(
            rtype=route.rtype,
            version=route.version,
            namespace=route.namespace,
            labels=parse_label_selector(query.get("labelSelector")),
            fields=self._fields(route, query),
            resource_version=query.get("resourceVersion") or None,
            allow_bookmarks=parse_bool(query.get("allowWatchBookmarks") or "false"),
            timeout_seconds=_timeout_param(timeout),
            send_initial_events=parse_bool(query.get("sendInitialEvents") or "false"),
            rv_match=query.get("resourceVersionMatch") or None,
        )
        if req.resource_version:
            parse_rv(req.resource_version)
        req.check()
        session = WatchSession(
            core.store,
            req,
            core.faults,
            bookmark_interval=core.bookmark_interval,
            default_timeout=core.watch_timeout_range,
            client_gone=self._client_gone,
            as_table=tables.wants_table(self.headers.get("Accept")),
        )
        self.send_response(200)
        self.send_header("Content-Type", tables.TABLE_CONTENT_TYPE if session.as_table else JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        self._status = 200
        core.watchers_started += 1
        log.debug("%s %s -> 200, watching", self.command, self.path)
        if self._record is not None:
            self._record[2] = 200  # visible in the request log while the stream is open
        try:
            session.run(self._write_chunk)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (AbortStream, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._drop_stream()
        except Exception:
            # Headers are out: a Status can no longer be sent, so drop the stream.
            traceback.print_exc(file=sys.stderr)
            self._drop_stream()

    def _drop_stream(self) -> None:
        """End the response without its final chunk (a network fault to the client)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write_chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except (OSError, ValueError):
            return True

    # --- admin (fault knobs for subprocess use) -------------------------------------------

    def _admin(self, path: str, body: bytes) -> None:
        core = self.core
        try:
            spec = json.loads(body) if body.strip() else {}
        except ValueError:
            raise errors.bad_request("admin body must be JSON") from None
        action = path[len("/_emulator/") :].strip("/")
        method = self.command
        if action == "faults" and method == "GET":
            result: Any = core.faults.describe()
        elif action == "faults" and method == "POST":
            core.faults.configure(spec)
            core.store.kick()
            result = core.faults.describe()
        elif action == "faults" and method == "DELETE":
            core.faults.reset()
            core.store.kick()
            result = core.faults.describe()
        elif action == "compact" and method == "POST":
            result = {"compactedResourceVersion": str(core.store.compact())}
        elif action == "bookmark" and method == "POST":
            core.send_bookmarks()
            result = {}
        elif action == "close-watches" and method == "POST":
            core.close_watches(abrupt=bool(spec.get("abrupt", False)))
            result = {}
        elif action == "refuse" and method == "POST":
            # The listener goes away, so the reply is sent first and the refusal follows.
            seconds = float(spec.get("seconds", 1.0))
            self._send_json(200, {"refusingForSeconds": seconds})
            self.close_connection = True
            core.refuse_connections_later(seconds)
            return
        elif action == "state" and method == "GET":
            result = core.describe()
        else:
            self._send_plain_404()
            return
        self._send_json(200, result)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _timeout_param(value: str | None) -> float | None:
    """timeoutSeconds; fractions are an emulator extension that keeps tests fast."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise errors.bad_request(f"invalid timeoutSeconds: {value}") from None
    return seconds if seconds > 0 else None


def _int_param(query: dict[str, str], key: str) -> int:
    value = query.get(key) or "0"
    try:
        return max(0, int(value))
    except ValueError:
        raise errors.bad_request(f"invalid {key}: {value}") from None


def _present(obj: dict[str, Any], route: ResourcePath) -> dict[str, Any]:
    api_version = route.rtype.api_version(route.version)
    if obj.get("apiVersion") == api_version:
        return obj
    return dict(obj, apiVersion=api_version)


def _present_list(result: dict[str, Any], route: ResourcePath) -> dict[str, Any]:
    api_version = route.rtype.api_version(route.version)
    items = result["items"]
    if route.rtype.builtin:
        # Built-in list items omit apiVersion/kind.
        items = [{k: v for k, v in i.items() if k not in ("apiVersion", "kind")} for i in items]
    else:
        items = [_present(i, route) for i in items]
    return dict(result, apiVersion=api_version, items=items)
