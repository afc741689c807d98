"""Message compressors in a start-up registry, with bounded decompression and negotiation."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from connect_proto._errors import Code, RpcError

IDENTITY = "identity"
_CHUNK = 64 * 1024


class Compressor(Protocol):
    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Inflate ``data``; raise RESOURCE_EXHAUSTED as soon as output passes ``max_size``."""
        ...


class GzipCompressor:
    name = "gzip"

    def __init__(self, level: int = 6) -> None:
        self._level = level

    def compress(self, data: bytes) -> bytes:
        c = zlib.compressobj(self._level, zlib.DEFLATED, 31)  # wbits 31 = gzip container
        return c.compress(data) + c.flush()

    def decompress(self, data: bytes, max_size: int) -> bytes:
        d = zlib.decompressobj(31)
        out = bytearray()
        pending = data
        try:
            # max_length caps each step, so a bomb never inflates more than one chunk
            # past the limit before we stop.
            while True:
                chunk = d.decompress(pending, _CHUNK)
                out += chunk
                if len(out) > max_size:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED,
                        f"decompressed message exceeds the limit {max_size}",
                    )
                pending = d.unconsumed_tail
                if d.eof or (not pending and not chunk):
                    break
        except zlib.error as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"gzip: {exc}") from None
        if not d.eof:
            raise RpcError(Code.INVALID_ARGUMENT, "gzip: truncated stream")
        return bytes(out)


COMPRESSORS: dict[str, Compressor] = {"gzip": GzipCompressor()}


def parse_encoding_list(values: Iterable[str]) -> list[str]:
    """Split (possibly repeated) Accept-Encoding values; q-values are tolerated and ignored."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.split(";", 1)[0].strip().lower()
            if name:
                names.append(name)
    return names


def request_compressor(
    name: str | None, compressors: Mapping[str, Compressor]
) -> Compressor | None:
    """The compressor named by a request's encoding header; None means identity.

    Unknown names raise UNIMPLEMENTED listing what the server supports.
    """
    if name is None:
        return None
    name = name.strip().lower()
    if name in ("", IDENTITY):
        return None
    found = compressors.get(name)
    if found is None:
        raise RpcError(
            Code.UNIMPLEMENTED,
            f"unknown compression {name!r}: supported encodings are "
            f"{', '.join([*compressors, IDENTITY])}",
        )
    return found


def negotiate_response(
    accept: list[str] | None,
    request: Compressor | None,
    compressors: Mapping[str, Compressor],
) -> Compressor | None:
    """Pick the response compressor: the first acceptable one we support.

    Without an accept list the client is assumed to accept what it sent.
    """
    if accept is None:
        return request
    for name in accept:
        found = compressors.get(name)
        if found is not None:
            return found
    return None
