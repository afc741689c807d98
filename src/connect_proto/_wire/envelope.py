"""The 5-byte message envelope shared by Connect streaming, gRPC and gRPC-Web (sans-IO).

Layout: one flags byte, a big-endian unsigned 32-bit payload length, the payload.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from connect_proto._errors import Code, RpcError

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02  # Connect end-stream message (responses only)
FLAG_TRAILER = 0x80  # gRPC-Web trailer frame (responses only)

_PREFIX = struct.Struct(">BI")
PREFIX_SIZE = _PREFIX.size


class Envelope(NamedTuple):
    flags: int
    payload: bytes


def encode_envelope(payload: bytes, flags: int = 0) -> bytes:
    return _PREFIX.pack(flags, len(payload)) + payload


class EnvelopeDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, ``close`` at end of body.

    The length prefix is checked against ``max_size`` before any payload is buffered,
    so a hostile prefix (say 0xFFFFFFFF) never causes a large allocation.
    """

    __slots__ = ("_buffer", "_max_size", "_need")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()
        self._need: tuple[int, int] | None = None  # (flags, length) once a prefix is read

    def feed(self, data: bytes) -> list[Envelope]:
        self._buffer += data
        out: list[Envelope] = []
        while True:
            if self._need is None:
                if len(self._buffer) < PREFIX_SIZE:
                    return out
                flags, length = _PREFIX.unpack_from(self._buffer)
                if length > self._max_size:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED,
                        f"message size {length} exceeds the limit {self._max_size}",
                    )
                del self._buffer[:PREFIX_SIZE]
                self._need = (flags, length)
            flags, length = self._need
            if len(self._buffer) < length:
                return out
            payload = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._need = None
            out.append(Envelope(flags, payload))

    def close(self) -> None:
        """Signal end of input; raises if a prefix or payload was cut short."""
        if self._need is not None or self._buffer:
            raise RpcError(Code.INVALID_ARGUMENT, "protocol error: incomplete envelope")
