"""Round-robin stream scheduling for hypercorn's HTTP/2 send task.

hypercorn 0.18 picks the next stream to send from a ``priority.PriorityTree``, which
places new streams ahead of ones already served. A stream whose response is complete is
only cleaned up on its next turn, so under sustained concurrency (a gRPC client with 64
calls always in flight) old streams starve, the tree grows by one entry per call, and at
1,000 entries ``TooManyStreamsError`` ends the server (docs/hypercorn-upstream.md, issue 3).
``FairScheduler`` is plain round-robin over the unblocked streams with the interface
hypercorn uses. Client priority signals are ignored, as RFC 9113 (5.3) deprecates them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from priority import priority as _priority

DeadlockError = _priority.DeadlockError
DuplicateStreamError = _priority.DuplicateStreamError
MissingStreamError = _priority.MissingStreamError


class FairScheduler:
    """Round-robin over unblocked streams; the subset of ``priority.PriorityTree`` that
    hypercorn uses, raising the same exceptions. O(1) per operation."""

    __slots__ = ("_active", "_queued", "_ready")

    def __init__(self) -> None:
        self._active: dict[int, bool] = {}  # stream id -> unblocked
        self._ready: deque[int] = deque()  # rotation; may hold blocked or removed ids
        self._queued: set[int] = set()  # ids in _ready, so none is queued twice

    def insert_stream(self, stream_id: int, *_: Any, **__: Any) -> None:
        if stream_id in self._active:
            raise DuplicateStreamError(stream_id)
        self._active[stream_id] = True
        self._enqueue(stream_id)

    def _enqueue(self, stream_id: int) -> None:
        if stream_id not in self._queued:
            self._queued.add(stream_id)
            self._ready.append(stream_id)

    def _known(self, stream_id: int) -> None:
        if stream_id not in self._active:
            raise MissingStreamError(stream_id)

    def block(self, stream_id: int) -> None:
        self._known(stream_id)
        self._active[stream_id] = False  # dropped from the rotation when next reached

    def unblock(self, stream_id: int) -> None:
        self._known(stream_id)
        self._active[stream_id] = True
        self._enqueue(stream_id)

    def is_blocked(self, stream_id: int) -> bool:
        """Known and blocked: the send task will not turn to it until it is unblocked."""
        return self._active.get(stream_id) is False

    def remove_stream(self, stream_id: int) -> None:
        self._known(stream_id)
        del self._active[stream_id]

    def reprioritize(self, stream_id: int, *_: Any, **__: Any) -> None:
        self._known(stream_id)  # priorities themselves are ignored

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> FairScheduler:
        return self

    def __next__(self) -> int:
        ready = self._ready
        while ready:
            stream_id = ready.popleft()
            if self._active.get(stream_id):
                ready.append(stream_id)  # its next turn comes after everyone else's
                return stream_id
            self._queued.discard(stream_id)  # blocked or removed: leaves the rotation
        raise DeadlockError("no unblocked streams")


__all__ = ["FairScheduler"]
