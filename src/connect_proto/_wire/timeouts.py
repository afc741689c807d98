"""Parsers for the protocols' timeout headers; both return seconds or raise INVALID_ARGUMENT."""

from __future__ import annotations

from connect_proto._errors import Code, RpcError

_GRPC_UNITS = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}


def parse_connect_timeout(value: str) -> float:
    """``Connect-Timeout-Ms``: 1-10 ASCII digits of milliseconds (0 = already expired)."""
    if not 0 < len(value) <= 10 or not value.isascii() or not value.isdigit():
        raise RpcError(Code.INVALID_ARGUMENT, f"protocol error: invalid timeout {value!r}")
    return int(value) / 1000


def parse_grpc_timeout(value: str) -> float:
    """``grpc-timeout``: 1-8 ASCII digits followed by one unit of H M S m u n."""
    digits, unit = value[:-1], value[-1:]
    scale = _GRPC_UNITS.get(unit)
    if scale is None or not 0 < len(digits) <= 8 or not digits.isascii() or not digits.isdigit():
        raise RpcError(Code.INVALID_ARGUMENT, f"protocol error: invalid grpc-timeout {value!r}")
    return int(digits) * scale
