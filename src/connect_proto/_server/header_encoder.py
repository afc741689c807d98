"""HPACK encoding without the dynamic table, each distinct header encoded once per process.

hpack's ``Encoder`` searches its dynamic table linearly for every header it sends, and
adds every new value to it. A server answering RPCs sends a few headers that never
change (``:status 200``, ``content-type``, ``grpc-status 0``) and a few that change with
every response (a request id, ``content-length``, ``date`` every second); the unique
ones fill the table, so each response pays a scan of a full table plus the Huffman
coding of every new value, in pure Python: a third of what h2 costs per response.

This encoder uses only the two representations whose bytes depend on the header alone
(RFC 7541, section 6): the static table's index when name and value are there, else a
literal *without indexing* (or *never indexed*, for headers h2 marks sensitive) that
names the header by its static-table index when it has one. So the dynamic table stays
empty in both peers, and a header's encoding can be computed once and reused by every
connection. Huffman coding (pure Python here) is only worth it for what recurs: a
header seen for the first time is sent as plain octets, and from its second sighting
on in its cached, Huffman-coded form. Sensitive headers (credentials) and long values
are never cached. The cost is a few bytes per header that the dynamic table would have
saved; the peer's decoder needs nothing special.

The one piece of connection state an encoder must still honour is a change of the
table size the peer allows (SETTINGS_HEADER_TABLE_SIZE): RFC 7541, section 4.2
requires the next header block to start with a size update, which the base class
tracks and emits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import hpack
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

# The first byte's pattern of each literal representation (RFC 7541, 6.2.2 and 6.2.3).
_WITHOUT_INDEXING: Final = 0x00
_NEVER_INDEXED: Final = 0x10

# Distinct headers remembered, as encoded and as seen once: past the bound a table is
# emptied and refilled with what recurs. Values longer than MAX_CACHED_VALUE bytes are
# never remembered, so the tables stay within a few MiB.
CACHE_LIMIT: Final = 4096
MAX_CACHED_VALUE: Final = 128

_STATIC: Final = HeaderTable.STATIC_TABLE_MAPPING
_HUFFMAN: Final = hpack.Encoder().huffman_coder


def _string(data: bytes, huffman: bool) -> bytes:
    """A string literal (RFC 7541, 5.2), Huffman-coded when asked and shorter."""
    coded = _HUFFMAN.encode(data) if huffman else data
    if len(coded) < len(data):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(data), 7)) + data


def encode_header(name: bytes, value: bytes, never_indexed: bool, huffman: bool = True) -> bytes:
    """One header field's representation, independent of any dynamic table."""
    static = _STATIC.get(name)
    if static is not None and not never_indexed:
        index = static[1].get(value)
        if index is not None:
            field = encode_integer(index, 7)
            field[0] |= 0x80
            return bytes(field)
    pattern = _NEVER_INDEXED if never_indexed else _WITHOUT_INDEXING
    if static is not None:
        prefix = encode_integer(static[0], 4)
        prefix[0] |= pattern
        return bytes(prefix) + _string(value, huffman)
    return bytes((pattern,)) + _string(name, huffman) + _string(value, huffman)


Key = tuple[bytes, bytes]
_plain: dict[Key, bytes] = {}  # recurring headers, encoded
_seen_once: dict[Key, None] = {}  # the rest, seen once


def _uncached(cache: dict[Key, bytes], key: Key) -> bytes:
    """A header not in ``cache``: plain octets the first time, cached from the second."""
    if key in _seen_once:
        del _seen_once[key]
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        encoded = cache[key] = encode_header(key[0], key[1], False)
        return encoded
    if len(_seen_once) >= CACHE_LIMIT:
        _seen_once.clear()
    _seen_once[key] = None
    return encode_header(key[0], key[1], False, huffman=False)


class StatelessHeaderEncoder(hpack.Encoder):
    """``hpack.Encoder`` that never indexes, so every header's bytes come from a cache.

    ``huffman`` is ignored: Huffman coding is chosen per header (see the module)."""

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        block: list[bytes] = []
        if self.table_size_changes:
            # The peer changed the table size it allows: acknowledge it first. (Not
            # ``resized``: a repeated SETTINGS of the same size resets that flag while
            # the change is still owed.)
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        plain = _plain
        for header in headers:
            name, value = header[0], header[1]
            if isinstance(name, str):
                name = name.encode("utf-8")
            if isinstance(value, str):
                value = value.encode("utf-8")
            never = (
                not header.indexable
                if isinstance(header, hpack.HeaderTuple)
                else len(header) > 2 and bool(header[2])
            )
            if never or len(value) > MAX_CACHED_VALUE:
                # Credentials stay out of process-wide memory; long values (an error
                # message) are rarely repeated and would make the cache large.
                block.append(encode_header(name, value, never, huffman=False))
                continue
            key = (name, value)
            encoded = plain.get(key)
            block.append(encoded if encoded is not None else _uncached(plain, key))
        return b"".join(block)


__all__ = ["CACHE_LIMIT", "MAX_CACHED_VALUE", "StatelessHeaderEncoder", "encode_header"]
