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
table, each distinct header encoded once per process.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.stream import StreamState

from connect_proto._server.header_encoder import StatelessHeaderEncoder

_SENDING_SIDE_CLOSED = (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED)


class RpcH2Connection(h2.connection.H2Connection):
    """``H2Connection`` whose stream-ending calls are idempotent."""

    def __init__(self, config: h2.config.H2Configuration | None = None) -> None:
        super().__init__(config)
        self.encoder = StatelessHeaderEncoder()

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
