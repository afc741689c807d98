"""Sans-IO unit tests: envelopes, codecs, compression, timeouts, status mapping, vectors."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import zlib

import pytest
from google.protobuf import any_pb2, wrappers_pb2
from testsvc.v1 import test_pb2

from connect_proto import Code, Headers, RpcError
from connect_proto._wire.b64 import decode_lenient, encode_unpadded
from connect_proto._wire.codec import CODECS
from connect_proto._wire.compression import (
    COMPRESSORS,
    negotiate_response,
    parse_encoding_list,
    request_compressor,
)
from connect_proto._wire.connect import end_stream_json, error_from_dict, error_json
from connect_proto._wire.dispatch import parse_content_type
from connect_proto._wire.envelope import EnvelopeDecoder, encode_envelope
from connect_proto._wire.grpc import (
    Base64Decoder,
    percent_decode,
    percent_encode,
    status_details_bin,
    status_fields,
    trailer_frame,
)
from connect_proto._wire.timeouts import parse_connect_timeout, parse_grpc_timeout

# Envelopes ----------------------------------------------------------------------------


def test_envelope_encode_layout() -> None:
    assert encode_envelope(b"{}", 0x02) == bytes.fromhex("02 00 00 00 02") + b"{}"
    assert encode_envelope(b"") == b"\x00\x00\x00\x00\x00"


def test_envelope_decoder_handles_arbitrary_splits() -> None:
    stream = encode_envelope(b"abc") + encode_envelope(b"", 1) + encode_envelope(b"x" * 300, 2)
    for split in range(1, len(stream)):
        decoder = EnvelopeDecoder(1000)
        got = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
        decoder.close()
        assert [(e.flags, e.payload) for e in got] == [(0, b"abc"), (1, b""), (2, b"x" * 300)]


def test_envelope_one_byte_at_a_time() -> None:
    stream = encode_envelope(b"hello") * 3
    decoder = EnvelopeDecoder(10)
    got = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert [e.payload for e in got] == [b"hello"] * 3


def test_envelope_oversized_prefix_rejected_before_buffering() -> None:
    decoder = EnvelopeDecoder(1024)
    with pytest.raises(RpcError) as info:
        decoder.feed(b"\x00\xff\xff\xff\xff" + b"abc")
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_envelope_exactly_at_limit_is_fine() -> None:
    decoder = EnvelopeDecoder(5)
    assert decoder.feed(encode_envelope(b"12345"))[0].payload == b"12345"
    with pytest.raises(RpcError) as info:
        EnvelopeDecoder(5).feed(encode_envelope(b"123456"))
    assert info.value.code is Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("data", [b"\x00\x00\x00", b"\x00\x00\x00\x00\x0a" + b"abcd"])
def test_envelope_truncated_is_invalid_argument(data: bytes) -> None:
    decoder = EnvelopeDecoder(100)
    assert decoder.feed(data) == []
    with pytest.raises(RpcError) as info:
        decoder.close()
    assert info.value.code is Code.INVALID_ARGUMENT


# Codecs -------------------------------------------------------------------------------


def test_proto_codec_round_trip_and_empty() -> None:
    codec = CODECS["proto"]
    message = test_pb2.EchoRequest(message="hi", payload=b"\x00\x01")
    assert codec.decode(codec.encode(message), test_pb2.EchoRequest) == message
    assert codec.decode(b"", test_pb2.EchoRequest) == test_pb2.EchoRequest()


def test_proto_codec_garbage_is_invalid_argument() -> None:
    with pytest.raises(RpcError) as info:
        CODECS["proto"].decode(b"\xff\xff\xff", test_pb2.EchoRequest)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_json_codec_accepts_both_field_names_and_ignores_unknown() -> None:
    codec = CODECS["json"]
    a = codec.decode(b'{"response_headers":[{"name":"a"}],"nope":1}', test_pb2.EchoRequest)
    b = codec.decode(b'{"responseHeaders":[{"name":"a"}]}', test_pb2.EchoRequest)
    assert a == b == test_pb2.EchoRequest(response_headers=[test_pb2.Header(name="a")])


def test_json_codec_emits_lower_camel_compactly() -> None:
    out = CODECS["json"].encode(test_pb2.EchoResponse(timeout_seconds=1.5, protocol="x"))
    assert out == b'{"timeoutSeconds":1.5,"protocol":"x"}'
    assert CODECS["json"].encode(test_pb2.FailResponse()) == b"{}"


@pytest.mark.parametrize(
    "body", [b"", b"{} x", b"{}{}", b"[1]", b'"x"', b"null", b"\xff", b'{"message":1}']
)
def test_json_codec_rejects_bad_bodies(body: bytes) -> None:
    with pytest.raises(RpcError) as info:
        CODECS["json"].decode(body, test_pb2.EchoRequest)
    assert info.value.code is Code.INVALID_ARGUMENT


# Compression --------------------------------------------------------------------------


def test_gzip_round_trip_interoperates_with_stdlib() -> None:
    gz = COMPRESSORS["gzip"]
    assert gzip.decompress(gz.compress(b"hello" * 100)) == b"hello" * 100
    assert gz.decompress(gzip.compress(b"data"), 100) == b"data"


def test_gzip_exactly_at_limit_succeeds() -> None:
    gz = COMPRESSORS["gzip"]
    assert len(gz.decompress(gzip.compress(b"a" * 1000), 1000)) == 1000
    with pytest.raises(RpcError) as info:
        gz.decompress(gzip.compress(b"a" * 1001), 1000)
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_gzip_bomb_stops_early() -> None:
    # 1 GiB of zeros compresses to ~1 MiB; inflating must stop right after the limit.
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1024 * 1024)
    bomb = b"".join(c.compress(chunk) for _ in range(64)) + c.flush()  # 64 MiB inflated
    assert len(bomb) < 200_000
    with pytest.raises(RpcError) as info:
        COMPRESSORS["gzip"].decompress(bomb, 4 * 1024 * 1024)
    assert info.value.code is Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("data", [b"not gzip", gzip.compress(b"abcdef")[:-6]])
def test_gzip_corrupt_or_truncated_is_invalid_argument(data: bytes) -> None:
    with pytest.raises(RpcError) as info:
        COMPRESSORS["gzip"].decompress(data, 100)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_request_compressor_names() -> None:
    assert request_compressor(None, COMPRESSORS) is None
    assert request_compressor("identity", COMPRESSORS) is None
    assert request_compressor("GZIP", COMPRESSORS) is COMPRESSORS["gzip"]
    with pytest.raises(RpcError) as info:
        request_compressor("foo", COMPRESSORS)
    assert info.value.code is Code.UNIMPLEMENTED
    assert "gzip" in info.value.message


def test_accept_encoding_parsing_and_negotiation() -> None:
    assert parse_encoding_list(["br;q=1.0, gzip", "zstd"]) == ["br", "gzip", "zstd"]
    gz = COMPRESSORS["gzip"]
    assert negotiate_response(["br", "gzip"], None, COMPRESSORS) is gz
    assert negotiate_response(["br"], gz, COMPRESSORS) is None
    assert negotiate_response(None, gz, COMPRESSORS) is gz  # absent: accepts what it sent
    assert negotiate_response(None, None, COMPRESSORS) is None


# Timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("0", 0.0), ("1500", 1.5), ("9999999999", 9999999.999)]
)
def test_connect_timeout_ok(value: str, seconds: float) -> None:
    assert parse_connect_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "12345678901", "-1", "1.5", "abc", " 1", "١٢"])
def test_connect_timeout_invalid(value: str) -> None:
    with pytest.raises(RpcError) as info:
        parse_connect_timeout(value)
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1S", 1.0),
        ("200m", 0.2),
        ("99999999n", 0.099999999),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("5u", 5e-6),
    ],
)
def test_grpc_timeout_ok(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "S", "100000000m", "5x", "1", "1.5S", "-1S", "1s"])
def test_grpc_timeout_invalid(value: str) -> None:
    with pytest.raises(RpcError) as info:
        parse_grpc_timeout(value)
    assert info.value.code is Code.INVALID_ARGUMENT


# Status codes (https://connectrpc.com/docs/protocol#error-codes) --------------------------

TABLE = [
    (1, "canceled", 499), (2, "unknown", 500), (3, "invalid_argument", 400),
    (4, "deadline_exceeded", 504), (5, "not_found", 404), (6, "already_exists", 409),
    (7, "permission_denied", 403), (8, "resource_exhausted", 429),
    (9, "failed_precondition", 400), (10, "aborted", 409), (11, "out_of_range", 400),
    (12, "unimplemented", 501), (13, "internal", 500), (14, "unavailable", 503),
    (15, "data_loss", 500), (16, "unauthenticated", 401),
]  # fmt: skip


@pytest.mark.parametrize(("number", "name", "status"), TABLE)
def test_code_table_both_directions(number: int, name: str, status: int) -> None:
    code = Code.from_grpc(number)
    assert (code.grpc, code.connect_name, code.http_status) == (number, name, status)
    assert Code.from_connect_name(name) is code


def test_unknown_codes_read_as_unknown() -> None:
    assert Code.from_grpc(0) is Code.UNKNOWN
    assert Code.from_grpc(17) is Code.UNKNOWN
    assert Code.from_connect_name("ok") is Code.UNKNOWN
    assert Code.from_connect_name("bogus") is Code.UNKNOWN


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, Code.INTERNAL), (401, Code.UNAUTHENTICATED), (403, Code.PERMISSION_DENIED),
     (404, Code.UNIMPLEMENTED), (429, Code.UNAVAILABLE), (502, Code.UNAVAILABLE),
     (503, Code.UNAVAILABLE), (504, Code.UNAVAILABLE), (405, Code.UNKNOWN), (415, Code.UNKNOWN),
     (431, Code.UNKNOWN), (505, Code.UNKNOWN), (200, Code.UNKNOWN)],
)  # fmt: skip
def test_http_status_to_code(status: int, code: Code) -> None:
    assert Code.from_http_status(status) is code


# Connect error JSON and the end-stream message (https://connectrpc.com/docs/protocol) -----


def test_connect_error_json_vector() -> None:
    error = RpcError(Code.UNAVAILABLE, "retry later", (wrappers_pb2.StringValue(value="hi"),))
    assert json.loads(error_json(error)) == {
        "code": "unavailable",
        "message": "retry later",
        "details": [{"type": "google.protobuf.StringValue", "value": "CgJoaQ"}],
    }


def test_connect_error_json_omits_empty_message_and_accepts_packed_any() -> None:
    packed = any_pb2.Any()
    packed.Pack(wrappers_pb2.StringValue(value="hi"))
    out = json.loads(error_json(RpcError(Code.NOT_FOUND, "", (packed,))))
    assert out == {
        "code": "not_found",
        "details": [{"type": "google.protobuf.StringValue", "value": "CgJoaQ"}],
    }


def test_connect_error_json_round_trip_unicode() -> None:
    message = "\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\n"
    raw = error_json(RpcError(Code.INTERNAL, message))
    assert b"\\n" in raw and b"\n" not in raw  # control characters escaped
    parsed = error_from_dict(json.loads(raw), Code.UNKNOWN)
    assert (parsed.code, parsed.message) == (Code.INTERNAL, message)


def test_connect_error_from_dict_tolerates_oddities() -> None:
    assert error_from_dict({}, Code.UNAVAILABLE).code is Code.UNAVAILABLE
    assert error_from_dict({"code": None}, Code.INTERNAL).code is Code.INTERNAL
    assert error_from_dict({"code": "nope", "x": 1}, Code.INTERNAL).code is Code.UNKNOWN
    padded = error_from_dict(
        {"code": "aborted", "details": [{"type": "t.T", "value": "CgJoaQ==", "debug": {}}]},
        Code.UNKNOWN,
    )
    assert padded.details[0].value == b"\x0a\x02hi"


def test_end_stream_vectors() -> None:
    assert encode_envelope(end_stream_json(None, Headers()), 2) == bytes.fromhex(
        "02 00 00 00 02 7b 7d"
    )
    body = end_stream_json(RpcError(Code.UNAVAILABLE, "overloaded"), Headers())
    assert body == b'{"error":{"code":"unavailable","message":"overloaded"}}'
    trailers = Headers([("x-custom-trailer", "bing"), ("x-custom-trailer", "quux")])
    assert json.loads(end_stream_json(None, trailers)) == {
        "metadata": {"x-custom-trailer": ["bing", "quux"]}
    }


# gRPC status in trailers (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) ---

UNICODE = "\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\n"
UNICODE_ENCODED = (
    "%0Atest with whitespace%0D%0Aand Unicode BMP %E2%98%BA and non-BMP %F0%9F%98%88%0A"
)


def test_grpc_message_percent_encoding_vector() -> None:
    assert percent_encode(UNICODE) == UNICODE_ENCODED
    assert percent_decode(UNICODE_ENCODED) == UNICODE
    assert percent_encode("100% sure") == "100%25 sure"


def test_grpc_message_decoding_keeps_bad_escapes() -> None:
    assert percent_decode("bad %zz and %4") == "bad %zz and %4"


def test_grpc_status_fields_and_details_bin() -> None:
    error = RpcError(Code.UNAVAILABLE, "retry later", (wrappers_pb2.StringValue(value="hi"),))
    fields = dict(status_fields(error, Headers([("x-t", "1")])))
    assert fields["grpc-status"] == "14"
    assert fields["grpc-message"] == "retry later"
    assert fields["x-t"] == "1"
    from google.rpc import status_pb2

    raw = fields["grpc-status-details-bin"]
    assert "=" not in raw
    status = status_pb2.Status.FromString(decode_lenient(raw))
    assert (status.code, status.message) == (14, "retry later")
    assert status.details[0].type_url == "type.googleapis.com/google.protobuf.StringValue"
    assert status_details_bin(error) == raw
    assert dict(status_fields(None, Headers())) == {"grpc-status": "0"}


# gRPC-Web (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md) ------------------


def test_grpc_web_trailer_frame_vector() -> None:
    frame = trailer_frame(status_fields(None, Headers()))
    assert frame == bytes.fromhex("80 00 00 00 10") + b"grpc-status: 0\r\n"


def test_grpc_web_trailer_frame_repeats_multi_valued_lowercased() -> None:
    frame = trailer_frame([("grpc-status", "0"), ("X-A", "1"), ("x-a", "2")])
    assert frame[5:] == b"grpc-status: 0\r\nx-a: 1\r\nx-a: 2\r\n"


def test_grpc_web_text_vector() -> None:
    chunks = [
        base64.b64encode(encode_envelope(b"")),
        base64.b64encode(trailer_frame([("grpc-status", "0")])),
    ]
    assert b"".join(chunks) == b"AAAAAAA=gAAAABBncnBjLXN0YXR1czogMA0K"


def test_base64_decoder_concatenated_padded_chunks_any_split() -> None:
    text = b"AAAAAAA=gAAAABBncnBjLXN0YXR1czogMA0K"
    expected = encode_envelope(b"") + trailer_frame([("grpc-status", "0")])
    for split in range(len(text) + 1):
        decoder = Base64Decoder()
        out = decoder.feed(text[:split]) + decoder.feed(text[split:])
        decoder.close()
        assert out == expected


def test_base64_decoder_rejects_garbage_and_truncation() -> None:
    with pytest.raises(RpcError):
        Base64Decoder().feed(b"!!!!")
    decoder = Base64Decoder()
    decoder.feed(b"AAA")
    with pytest.raises(RpcError):
        decoder.close()


# Helpers ----------------------------------------------------------------------------------


def test_b64_unpadded_out_lenient_in() -> None:
    assert encode_unpadded(b"\x0a\x02hi") == "CgJoaQ"
    assert decode_lenient("CgJoaQ") == decode_lenient("CgJoaQ==") == b"\x0a\x02hi"
    assert decode_lenient("-_8", urlsafe=True) == b"\xfb\xff"
    with pytest.raises(ValueError):
        decode_lenient("***")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/proto", ("application/proto", "application/proto")),
        ("Application/JSON", ("application/json", "application/json")),
        (
            "application/json; charset=UTF-8",
            ("application/json", "application/json; charset=utf-8"),
        ),
        ("application/json; charset=latin-1", None),
        ("application/grpc+proto; foo=bar", ("application/grpc+proto", "application/grpc+proto")),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_content_type(value) == expected


def test_headers_case_insensitive_and_ordered() -> None:
    headers = Headers.from_asgi([(b"X-A", b"1"), (b"x-b", b"2"), (b"x-a", b"3")])
    assert headers.get("x-A") == "1"
    assert headers.get_all("X-a") == ["1", "3"]


def test_binary_metadata_padded_and_unpadded_in_unpadded_out() -> None:
    from connect_proto._headers import decode_binary_values, encode_binary_value

    assert encode_binary_value(b"\x0a\x02hi") == "CgJoaQ"
    assert decode_binary_values(["CgJoaQ", "CgJoaQ==, AQ"]) == [
        b"\x0a\x02hi",
        b"\x0a\x02hi",
        b"\x01",
    ]
    with pytest.raises(ValueError):
        decode_binary_values(["@@@"])


_ANY_DECODE_SCRIPT = """
import json, sys
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from connect_proto._wire.codec import CODECS

# A message with one Any field, built here so nothing else gets imported first.
pool = descriptor_pool.Default()
fdp = descriptor_pb2.FileDescriptorProto(name="anyholder.proto", package="anyholder",
                                         dependency=["google/protobuf/any.proto"])
msg = fdp.message_type.add(name="Holder")
msg.field.add(name="details", number=1, type=11, label=3, type_name=".google.protobuf.Any")
holder = message_factory.GetMessageClass(pool.Add(fdp).message_types_by_name["Holder"])
for detail in json.loads(sys.argv[1]):
    decoded = CODECS["json"].decode(json.dumps({"details": [detail]}).encode(), holder)
    assert json.loads(CODECS["json"].encode(decoded))["details"][0] == detail, detail
print("ok")
"""


def test_json_codec_decodes_any_of_well_known_and_error_detail_types() -> None:
    # A fresh interpreter: the test process has imported these types through other
    # modules, which would hide a codec that does not load them itself.
    details = [
        {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "hi"},
        {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.500s"},
        {"@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "2026-11-27T00:00:00Z"},
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R", "domain": "d"},
    ]
    result = subprocess.run(
        [sys.executable, "-c", _ANY_DECODE_SCRIPT, json.dumps(details)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
