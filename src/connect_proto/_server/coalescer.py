"""One socket write per scheduling step for an HTTP/2 connection.

Not a bug but the largest cost of a small call under hypercorn 0.18's trio worker: every
``H2Protocol._flush`` (response HEADERS, each DATA frame, END_STREAM, trailers,
WINDOW_UPDATEs) is its own locked, shielded ``send_all`` with its own trip through the
trio scheduler, so a gRPC unary response takes three socket writes and 64 calls in flight
take 192. ``WriteCoalescer`` stands between the protocol and ``TCPServer.protocol_send``:
``_flush`` appends the bytes h2 produced to the connection's buffer and wakes one writer
task per connection; the writer yields once (so the other tasks of the same scheduling
step add their frames) and then writes everything buffered with one ``send_all``,
repeating until the buffer is empty. What it keeps:

- Order: bytes leave in the order h2 produced them (one buffer, one writer); h2 itself
  enforces flow control when it builds frames, so nothing changes there.
- Backpressure: a send that brings the buffer to ``HIGH_WATER`` (64 KiB) waits until the
  writer has written it, as every ``_flush`` used to; a client that stops reading still
  stalls the server's reads and sends.
- Any other event for the server (``Closed``, ``Updated(idle=True)``) waits until the
  buffer is written first, so GOAWAY, trailers and the last responses are on the socket
  before hypercorn may close it. ``Updated(idle=False)`` (a new request; it only stops the
  idle timer) is passed on at once.
- When the connection closes (``stop``), the writer ends and unwritten bytes are
  dropped, as they would have failed on the socket; later sends go straight through.

Measured in tests/connect_proto/test_hypercorn_fixes.py: one gRPC unary response takes
1-2 writes instead of 3, 32 responses to calls sent at once about 45 instead of 96;
unary throughput on h2c rose 1.2-1.7x (docs/benchmarks.md, run D).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.events import Event, RawData, Updated

Send = Callable[[Event], Awaitable[None]]


class WriteCoalescer:
    """``send`` stands in for ``TCPServer.protocol_send``; ``run`` is the writer task;
    ``stop`` is called when ``Closed`` reaches the protocol."""

    HIGH_WATER = 64 * 1024

    __slots__ = ("_busy", "_chunks", "_running", "_send", "_size", "_stopped", "_task",
                 "_wake", "_written")  # fmt: skip

    def __init__(self, send: Send) -> None:
        self._send = send
        self._chunks: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()  # set when there is something to write (or to stop)
        self._written = trio.Event()  # set, then replaced, when the buffer is written
        self._busy = False  # the writer has woken and not yet emptied the buffer
        self._running = True  # the writer task has not ended
        self._stopped = False
        self._task: trio.lowlevel.Task | None = None

    @property
    def buffered(self) -> int:
        """Bytes waiting for the writer."""
        return self._size

    async def send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if not self._running:
                await self._send(event)  # the writer has ended: write as hypercorn does
                return
            self._chunks.append(event.data)
            self._size += len(event.data)
            self._wake.set()
            if self._size >= self.HIGH_WATER:
                await self.flush()  # backpressure, as when every _flush was a send_all
            return
        if not (isinstance(event, Updated) and not event.idle):
            await self.flush()  # Closed or idle: the bytes before it go out first
        await self._send(event)

    async def flush(self) -> None:
        """Until everything buffered so far is written (or the writer has ended)."""
        if self._task is not None and trio.lowlevel.current_task() is self._task:
            return  # called from inside the writer's own send: it is writing already
        while self._running and (self._chunks or self._busy):
            await self._written.wait()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        self._task = trio.lowlevel.current_task()
        try:
            while not self._stopped:
                await self._wake.wait()
                self._busy = True
                # One turn of the scheduler: the other tasks woken in this step (the
                # send task, the app tasks) add their frames to this write.
                await trio.lowlevel.checkpoint()
                while self._chunks and not self._stopped:
                    data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                    self._chunks.clear()
                    self._size = 0
                    await self._send(RawData(data=data))
                self._wake = trio.Event()  # the buffer is empty (or dropped below)
                self._busy = False
                written, self._written = self._written, trio.Event()
                written.set()
        finally:
            self._running = False
            self._busy = False
            self._chunks.clear()  # the connection is closed: these would fail to send
            self._size = 0
            self._written.set()


__all__ = ["WriteCoalescer"]
