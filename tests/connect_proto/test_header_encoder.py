"""The stateless HPACK encoder: any decoder reads what it writes, its table stays empty."""

from __future__ import annotations

import hpack
import pytest

from connect_proto._server import header_encoder
from connect_proto._server.header_encoder import StatelessHeaderEncoder, encode_header

RESPONSE = [
    (b":status", b"200"),  # static table, name and value: one byte
    (b"content-type", b"application/proto"),  # static name, literal value
    (b"grpc-status", b"0"),  # a name outside the static table
    (b"x-request-id", b"cf831da5307ea7c9c468f0047f065cdc"),
    (b"date", b"Thu, 03 Dec 2026 12:01:38 GMT"),
]


def test_a_decoder_reads_every_response_and_keeps_no_dynamic_entries() -> None:
    encoder, decoder = StatelessHeaderEncoder(), hpack.Decoder()
    for round_ in range(3):
        headers = [*RESPONSE, (b"content-length", str(round_).encode())]
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0
    assert len(encoder.header_table.dynamic_entries) == 0


def test_each_representation_is_the_one_rfc_7541_gives() -> None:
    assert encode_header(b":status", b"200", False) == b"\x88"  # indexed, static index 8
    # content-type is static index 31: literal without indexing, 4-bit prefix 15 + 16.
    assert encode_header(b"content-type", b"x", False)[:2] == b"\x0f\x10"
    assert encode_header(b"grpc-status", b"0", False)[0] == 0x00  # new name, not indexed
    assert encode_header(b"grpc-status", b"0", True)[0] == 0x10  # never indexed


def test_sensitive_headers_stay_never_indexed_even_when_static() -> None:
    decoder = hpack.Decoder()
    block = StatelessHeaderEncoder().encode(
        [hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer t"), (b"cookie", b"a", True)]
    )
    decoded = decoder.decode(block, raw=True)
    assert [tuple(h) for h in decoded] == [(b"authorization", b"Bearer t"), (b"cookie", b"a")]
    assert all(not h.indexable for h in decoded)


def test_sensitive_and_long_values_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header_encoder, "_plain", {})
    monkeypatch.setattr(header_encoder, "_seen_once", {})
    encoder, decoder = StatelessHeaderEncoder(), hpack.Decoder()
    long_value = b"x" * (header_encoder.MAX_CACHED_VALUE + 1)
    headers = [
        hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer secret"),
        (b"grpc-message", long_value),
    ]
    for _ in range(3):
        assert [tuple(h) for h in decoder.decode(encoder.encode(headers), raw=True)] == [
            (b"authorization", b"Bearer secret"),
            (b"grpc-message", long_value),
        ]
    remembered = {*header_encoder._plain, *header_encoder._seen_once}
    assert not any(b"secret" in v or v == long_value for _, v in remembered)


def test_str_headers_are_sent_as_utf8() -> None:
    block = StatelessHeaderEncoder().encode([("x-name", "café")])
    assert hpack.Decoder().decode(block, raw=True) == [(b"x-name", "café".encode())]


def test_a_table_size_the_peer_changed_is_acknowledged_first() -> None:
    encoder, decoder = StatelessHeaderEncoder(), hpack.Decoder()
    encoder.header_table_size = 0  # SETTINGS_HEADER_TABLE_SIZE = 0 from the peer
    block = encoder.encode(RESPONSE)
    assert block[0] == 0x20  # dynamic table size update to 0 (RFC 7541, 6.3)
    decoder.max_allowed_table_size = 0
    assert decoder.decode(block, raw=True) == RESPONSE
    assert encoder.encode(RESPONSE)[0] != 0x20  # only once


def test_a_repeated_table_size_setting_still_gets_its_update() -> None:
    """h2 sets the size for every SETTINGS frame that carries it; the second, equal one
    resets hpack's ``resized`` flag while the update is still owed."""
    encoder, decoder = StatelessHeaderEncoder(), hpack.Decoder()
    encoder.header_table_size = 0
    encoder.header_table_size = 0
    block = encoder.encode(RESPONSE)
    assert block[0] == 0x20
    decoder.max_allowed_table_size = 0
    assert decoder.decode(block, raw=True) == RESPONSE


def test_a_header_is_huffman_coded_and_cached_once_it_recurs() -> None:
    encoder = StatelessHeaderEncoder()
    header = (b"x-recurring", b"aaaaaaaaaaaaaaaaaaaa")
    first, second, third = (encoder.encode([header]) for _ in range(3))
    assert header[1] in first  # first sight: plain octets
    assert len(second) < len(first)  # then Huffman-coded, shorter
    assert third == second
    for block in (first, second):
        assert hpack.Decoder().decode(block, raw=True) == [header]


@pytest.mark.parametrize("twice", [False, True])
def test_the_tables_are_bounded(monkeypatch: pytest.MonkeyPatch, twice: bool) -> None:
    monkeypatch.setattr(header_encoder, "_plain", {})
    monkeypatch.setattr(header_encoder, "_seen_once", {})
    encoder = StatelessHeaderEncoder()
    for n in range(header_encoder.CACHE_LIMIT + 10):
        for _ in range(2 if twice else 1):
            encoder.encode([(b"x-request-id", str(n).encode())])
    for table in (header_encoder._plain, header_encoder._seen_once):
        assert len(table) <= header_encoder.CACHE_LIMIT
    assert len(header_encoder._plain if twice else header_encoder._seen_once) > 0
