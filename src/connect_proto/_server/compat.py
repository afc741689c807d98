"""The hypercorn and h2 versions the server's subclasses were written against.

``RpcTCPServer``, ``RpcProtocolWrapper``, ``RpcH2Protocol``, ``RpcH11Protocol`` and
``RpcH2Connection`` override methods of hypercorn's and h2's classes and copy a few of
hypercorn's loops; another release may have changed (or fixed) what they rely on. So
``serve`` refuses to start on versions outside the verified ranges, with one line that
says what to install, rather than run with fixes that no longer fit.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# (distribution, lowest verified, first unverified); keep in step with pyproject.toml.
SUPPORTED: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("hypercorn", (0, 18), (0, 19)),
    ("h2", (4, 3), (4, 5)),
)

# Methods the subclasses override or call, by class; a missing one means a changed shape.
_SHAPE = {
    "hypercorn.trio.tcp_server.TCPServer": (
        "run", "protocol_send", "_read_data", "_close", "_idle_timeout",
        "_initiate_server_close",
    ),
    "hypercorn.protocol.h2.H2Protocol": (
        "initiate", "handle", "stream_send", "_handle_events", "_flush", "_create_stream",
        "_close_stream", "_window_updated", "_priority_updated", "send_task",
    ),
    "hypercorn.protocol.h2.StreamBuffer": ("push", "pop", "close", "drain", "set_complete"),
    "hypercorn.protocol.h11.H11Protocol": (
        "handle", "stream_send", "_handle_events", "_maybe_recycle", "_close_stream",
        "_check_protocol", "_create_stream", "_send_h11_event", "_send_error_response",
    ),
    "h2.connection.H2Connection": (
        "end_stream", "reset_stream", "update_settings", "close_connection",
        "_receive_headers_frame", "send_headers", "_open_streams",
    ),
    "hpack.Encoder": ("encode", "_encode_table_size_change"),
    "hypercorn.trio.task_group.TaskGroup": ("spawn_app",),
    "hypercorn.config.Config": ("response_headers",),
}  # fmt: skip


class UnsupportedLibraryError(RuntimeError):
    """hypercorn or h2 is a version the server was not written for."""


def _parse(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _shape_errors() -> list[str]:
    import importlib

    errors = []
    for dotted, names in _SHAPE.items():
        module_name, _, class_name = dotted.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name, None)
        missing = [n for n in names if not callable(getattr(cls, n, None))]
        if missing:
            errors.append(f"{dotted} has no {', '.join(missing)}")
    return errors


def unsupported() -> list[str]:
    """What is wrong with the installed hypercorn and h2 (empty when all is well)."""
    problems = []
    for distribution, low, high in SUPPORTED:
        installed = _installed(distribution)
        if not low <= _parse(installed) < high:
            wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            problems.append(f"{distribution} {installed} (this server needs {wanted})")
    return problems or _shape_errors()


def check_supported() -> None:
    """Raise ``UnsupportedLibraryError`` unless hypercorn and h2 are verified versions."""
    problems = unsupported()
    if problems:
        raise UnsupportedLibraryError(
            "connect_proto's server fixes were written for other versions: " + "; ".join(problems)
        )


__all__ = ["SUPPORTED", "UnsupportedLibraryError", "check_supported", "unsupported"]
