"""CPU per response to HPACK-encode a typical RPC answer's headers: h2's own encoder
(hpack.Encoder, dynamic table) against connect_proto's StatelessHeaderEncoder, one
encoder per connection as h2 keeps it, a new request id in every response.

    python bench/hpack_encode.py
"""

from __future__ import annotations

import time

import hpack

from connect_proto._app.request_id import new_request_id
from connect_proto._server.header_encoder import StatelessHeaderEncoder

RESPONSES = 20_000


def per_response(encoder: hpack.Encoder) -> float:
    start = time.perf_counter()
    for _ in range(RESPONSES):
        encoder.encode(
            [
                (b":status", b"200"),
                (b"content-type", b"application/proto"),
                (b"accept-encoding", b"gzip"),
                (b"x-request-id", new_request_id().encode()),
                (b"content-length", b"0"),
                (b"date", b"Thu, 03 Dec 2026 12:01:38 GMT"),
                (b"server", b"hypercorn-h2"),
            ]
        )
    return (time.perf_counter() - start) / RESPONSES * 1e6


if __name__ == "__main__":
    for name, encoder in (
        ("hpack.Encoder", hpack.Encoder()),
        ("StatelessHeaderEncoder", StatelessHeaderEncoder()),
    ):
        print(f"{name:24s} {per_response(encoder):6.1f} µs per response")
