"""Every error body the emulator can answer with, in one place.

Bodies follow apimachinery's ``metav1.Status`` exactly: ``metadata`` is
always ``{}``, ``details.kind`` is the plural resource, and the HTTP status equals ``code``.
Handlers raise :class:`StatusError`; the HTTP layer turns it into a response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

REASON_PHRASES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

# Size limits (bytes). The API server reads at most 3 MiB of a request body
# (apiserver's MaxRequestBodyBytes); etcd refuses requests over --max-request-bytes
# (default 1.5 MiB), and the API server's etcd client refuses to send gRPC messages over
# 2 MiB. The emulator measures a stored object as its compact JSON (CRs are stored as JSON),
# leaving out etcd's key and framing.
MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024
ETCD_MAX_REQUEST_BYTES = 3 * 512 * 1024
ETCD_CLIENT_MAX_SEND_BYTES = 2 * 1024 * 1024

# Go's default mux answer for paths no API group serves: plain text, not JSON.
PLAIN_404 = b"404 page not found\n"
PLAIN_429 = b"Too many requests, please try again later.\n"


@dataclass
class FieldError:
    """One ``field.Error``: rendered like apimachinery's ``ErrorBody``."""

    type: str  # FieldValueInvalid, FieldValueRequired, FieldValueForbidden, ...
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        if self.type == "FieldValueRequired":
            text = "Required value"
        elif self.type == "FieldValueForbidden":
            text = "Forbidden"
        elif self.type == "FieldValueNotSupported":
            text = f"Unsupported value: {_go_repr(self.value)}"
        elif self.type == "FieldValueDuplicate":
            text = f"Duplicate value: {_go_repr(self.value)}"
        elif self.type == "FieldValueTypeInvalid":
            text = f"Invalid value: {_go_repr(self.value)}"
        else:
            text = f"Invalid value: {_go_repr(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.type, "message": self.body(), "field": self.field}


def invalid(field_path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", field_path, value, detail)


def required(field_path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", field_path, None, detail)


def forbidden(field_path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", field_path, None, detail)


def not_supported(field_path: str, value: Any, supported: list[str]) -> FieldError:
    return FieldError(
        "FieldValueNotSupported",
        field_path,
        value,
        "supported values: " + ", ".join(json.dumps(s) for s in supported),
    )


def _go_repr(value: Any) -> str:
    # Go formats strings with %q and everything else with %v; JSON is close enough for both.
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass
class StatusError(Exception):
    """An API error carrying its ``metav1.Status`` body."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    retry_after: int | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def to_status(self) -> dict[str, Any]:
        return failure_status(
            self.code, self.reason, self.message, self.details, self.extra_metadata
        )


def failure_status(
    code: int,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": dict(metadata or {}),
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details:
        body["details"] = details
    body["code"] = code
    return body


def success_status(details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


# --- factories -----------------------------------------------------------------------------
# ``qualified`` is the group-qualified plural (``taskactions.flyte.org``; ``namespaces`` for
# the core group) and ``group`` the API group, empty for core.


def _details(name: str, group: str, plural: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    details.update(extra)
    return details


def not_found(qualified: str, group: str, plural: str, name: str) -> StatusError:
    return StatusError(
        404, "NotFound", f'{qualified} "{name}" not found', _details(name, group, plural)
    )


def namespace_not_found(namespace: str) -> StatusError:
    return not_found("namespaces", "", "namespaces", namespace)


def subresource_not_found() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(
    qualified: str, group: str, plural: str, name: str, *, being_deleted: bool = False
) -> StatusError:
    prefix = "object is being deleted: " if being_deleted else ""
    return StatusError(
        409,
        "AlreadyExists",
        f'{prefix}{qualified} "{name}" already exists',
        _details(name, group, plural),
    )


def conflict(qualified: str, group: str, plural: str, name: str, why: str) -> StatusError:
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        _details(name, group, plural),
    )


CONFLICT_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid_object(
    group_kind: str, kind: str, group: str, name: str, errs: list[FieldError]
) -> StatusError:
    """422 Invalid; ``group_kind`` is ``TaskAction.flyte.org`` (``Namespace`` for core)."""
    if len(errs) == 1:
        text = str(errs[0])
    else:
        text = "[" + ", ".join(str(e) for e in errs) + "]"
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [e.cause() for e in errs]
    return StatusError(422, "Invalid", f'{group_kind} "{name}" is invalid: {text}', details)


def invalid_list_options(err: FieldError) -> StatusError:
    """422 Invalid for a bad list or watch query (``ListOptions "" is invalid: ...``)."""
    return invalid_object("ListOptions", "", "", "", [err])


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(verb: str, qualified: str) -> StatusError:
    return StatusError(
        405,
        "MethodNotAllowed",
        f'{verb} is not supported on resources of kind "{qualified}"',
        {},
    )


def unsupported_media_type(content_type: str | None = None) -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/apply-patch+yaml",
    )


def too_many_requests(retry_after: int, message: str | None = None) -> StatusError:
    return StatusError(
        429,
        "TooManyRequests",
        message or "Too many requests, please try again later.",
        {"retryAfterSeconds": retry_after},
        retry_after=retry_after,
    )


def internal_error(message: str) -> StatusError:
    return StatusError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )


def request_entity_too_large(limit: int = MAX_REQUEST_BODY_BYTES) -> StatusError:
    """A body over the API server's limit (kubernetes/kubernetes#105863)."""
    return StatusError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def object_too_large(size: int) -> StatusError:
    """etcd refused the write. The API server passes etcd's error through as a 500 without
    a reason (kubernetes/kubernetes#112152): etcd's own limit up to the client's 2 MiB,
    the etcd client's gRPC error above it."""
    if size > ETCD_CLIENT_MAX_SEND_BYTES:
        return StatusError(
            500,
            "",
            "rpc error: code = ResourceExhausted desc = trying to send message larger than "
            f"max ({size} vs. {ETCD_CLIENT_MAX_SEND_BYTES})",
        )
    return StatusError(500, "", "etcdserver: request is too large")


def expired(message: str, continue_token: str | None = None) -> StatusError:
    meta = {"continue": continue_token} if continue_token else {}
    return StatusError(410, "Expired", message, extra_metadata=meta)


def too_old_resource_version(requested: int, oldest: int) -> StatusError:
    return expired(f"too old resource version: {requested} ({oldest})")


def rv_too_large(requested: int, current: int) -> StatusError:
    return StatusError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {
                    "reason": "ResourceVersionTooLarge",
                    "message": "Too large resource version",
                }
            ],
            "retryAfterSeconds": 1,
        },
        retry_after=1,
    )


def namespace_terminating(
    qualified: str, group: str, plural: str, name: str, namespace: str
) -> StatusError:
    message = (
        f"unable to create new content in namespace {namespace} because it is being terminated"
    )
    details = _details(name, group, plural)
    details["causes"] = [
        {"reason": "NamespaceTerminating", "message": message, "field": "metadata.namespace"}
    ]
    return StatusError(403, "Forbidden", f'{qualified} "{name}" is forbidden: {message}', details)


def invalid_resource_version_param(value: str) -> StatusError:
    # Upstream surfaces strconv's error unchanged as an internal error (python-base#199).
    return internal_error(
        f'resourceVersion: Invalid value: "{value}": strconv.ParseUint: parsing '
        f'"{value}": invalid syntax'
    )


def invalid_patch(err: FieldError) -> StatusError:
    """A JSON patch that cannot apply, or a non-object merge patch."""
    return StatusError(422, "Invalid", f' "" is invalid: {err}', {"causes": [err.cause()]})


def resource_version_on_create() -> StatusError:
    # Upstream answers 500 with no reason.
    return StatusError(500, "", "resourceVersion should not be set on objects to be created")


def unsupported_body_encoding(content_type: str) -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        f"the emulator does not decode {content_type} request bodies; send application/json",
    )


def injected(status: int, message: str | None, retry_after: int | None) -> StatusError:
    """The Status a fault rule answers with (faults.ErrorRule)."""
    if status == 429:
        return too_many_requests(retry_after or 0, message)
    if status == 500:
        return internal_error(message or "injected fault")
    return StatusError(
        status,
        REASON_PHRASES.get(status, "InternalError"),
        message or f"injected fault ({status})",
        None if retry_after is None else {"retryAfterSeconds": retry_after},
    )
