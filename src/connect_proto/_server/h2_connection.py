"""The h2 connection hypercorn's HTTP/2 protocol drives, made safe for how it drives it.

hypercorn 0.18 calls three ``H2Connection`` methods at moments h2 treats as errors; each
error escapes into the trio worker and ends the server (docs/hypercorn-upstream.md):

- ``end_stream`` after gRPC trailers (HEADERS with END_STREAM) already ended the
  stream: h2 marks the stream CLOSED without telling the peer, so a client still
  uploading never gets another WINDOW_UPDATE for it and hangs (issue 2). Here it is a
  no-op when our sending side is already closed.
- ``reset_stream`` for a stream the client has already reset (its HEADERS and
  RST_STREAM in one read, while hypercorn refuses new streams during shutdown):
  ``StreamClosedError`` (issue 6). Here it is a no-op: the stream is closed either way.
- ``reset_stream`` and ``update_settings`` after GOAWAY went out (the connection is
  CLOSED): ``ProtocolError`` (issue 4). Here both are no-ops; GOAWAY's last-stream-id
  already tells the client which streams were not processed.

It also encodes headers with ``StatelessHeaderEncoder`` (header_encoder.py): no dynamic
table, each distinct header encoded once per process; and normalizes and checks header
blocks, received and sent, in one pass each (inbound_headers.py, outbound_headers.py)
instead of h2's generator chains, with the same outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, TrailersReceived
from h2.stream import StreamState
from hyperframe.frame import Frame

from connect_proto._server import inbound_headers, outbound_headers
from connect_proto._server.header_encoder import StatelessHeaderEncoder

_SENDING_SIDE_CLOSED = (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED)
# Streams h2 may keep before it is asked to walk them (see open_inbound_streams).
_COUNT_STREAMS_AT_LEAST = 64


class RpcH2Connection(h2.connection.H2Connection):
    """``H2Connection`` whose stream-ending calls are idempotent."""

    def __init__(self) -> None:
        # Inbound blocks are normalized and checked by _receive_headers_frame, as bytes.
        super().__init__(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                normalize_inbound_headers=False,
                validate_inbound_headers=False,
                normalize_outbound_headers=False,
                validate_outbound_headers=False,
            )
        )
        self.encoder = StatelessHeaderEncoder()
        self._count_streams_at = _COUNT_STREAMS_AT_LEAST

    @property
    def open_inbound_streams(self) -> int:
        """h2 reads this for each new stream, to hold the peer to our
        SETTINGS_MAX_CONCURRENT_STREAMS, and counts by walking every stream it keeps
        (dropping the closed ones as it goes): work in the number of streams, per request.
        While fewer streams are kept than the limit, their number answers that check as
        well (it is at least the number open); h2's walk runs once they reach the limit,
        or twice what its last walk kept, so that closed streams do not pile up."""
        kept = len(self.streams)
        if kept < self._count_streams_at and kept < self.local_settings.max_concurrent_streams:
            return kept
        count: int = super().open_inbound_streams
        self._count_streams_at = max(_COUNT_STREAMS_AT_LEAST, 2 * len(self.streams))
        return count

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Any],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        # What h2 would check, in one pass; h2 calls a block sent after the headers
        # trailers.
        stream = self.streams.get(stream_id)
        if stream is not None and stream.state_machine.headers_sent:
            checked = outbound_headers.trailer_headers(headers)
        else:
            checked = outbound_headers.response_headers(headers)
        super().send_headers(
            stream_id, checked, end_stream, priority_weight, priority_depends_on, priority_exclusive
        )

    def _receive_headers_frame(self, frame: Any) -> tuple[list[Frame], list[Event]]:
        # h2 has moved the stream's state when it hands the block over, as it has when its
        # own checks raise: either way a ProtocolError here ends the connection.
        frames, events = super()._receive_headers_frame(frame)
        for event in events:
            if isinstance(event, RequestReceived):
                event.headers = inbound_headers.request_headers(event.headers)
            elif isinstance(event, TrailersReceived):
                event.headers = inbound_headers.trailer_headers(event.headers)
        return frames, events

    @property
    def closed(self) -> bool:
        """GOAWAY was sent or received: nothing more may be sent but GOAWAY."""
        return self.state_machine.state is ConnectionState.CLOSED

    def sending_side_closed(self, stream_id: int) -> bool:
        stream = self.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _SENDING_SIDE_CLOSED

    def end_stream(self, stream_id: int) -> None:
        if self.sending_side_closed(stream_id):
            return  # trailers already ended our side; a second END_STREAM would close it
        super().end_stream(stream_id)

    def reset_stream(self, stream_id: int, error_code: ErrorCodes | int = 0) -> None:
        if self.closed:
            return
        try:
            super().reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass  # the peer closed or reset it first: nothing left to reset

    def update_settings(self, new_settings: dict[h2.settings.SettingCodes | int, int]) -> None:
        if self.closed:
            return
        super().update_settings(new_settings)


__all__ = ["RpcH2Connection"]
