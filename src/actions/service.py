"""``flyteidl2.actions.ActionsService``: Enqueue, WatchForUpdates, Update, Abort, Signal.

Handlers follow ``connect_proto._service`` shapes. State lives only in the store; the
service keeps no per-action memory, so several replicas may serve the same store.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Final

import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common.identifier_pb2 import ActionIdentifier
from flyteidl2.core.types_pb2 import SimpleType
from google.protobuf import json_format

from actions import naming, objects, timefmt, transitions
from actions.fanout import FanOut
from actions.store.base import KubeObject, Store
from actions.store.errors import (
    AlreadyExists,
    Conflict,
    Gone,
    NotFound,
    OwnerTerminating,
    StoreError,
    StoreUnavailable,
    TooLarge,
)
from actions.validation import invalid, validate
from connect_proto import Code, RequestContext, RpcError

log = logging.getLogger(__name__)

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["ActionsService"]

# Update and Signal retry a Conflict for this long rather than a number of times: with N
# writers racing on one object each round has one winner, so the last needs N-1 retries.
# Backoff is exponential with full jitter, so that a storm spreads out and drains.
CONFLICT_RETRY_SECONDS: Final = 10.0
CONFLICT_BACKOFF_CAP: Final = 0.05
# Annotations share a 256 KiB budget per object in Kubernetes; an abort must never fail
# because its reason is long, so what goes on the object is cut (the log keeps it all).
MAX_ANNOTATION_CHARS: Final = 16 * 1024
_SIMPLE_CONDITION_TYPES: Final = frozenset(
    {SimpleType.BOOLEAN, SimpleType.INTEGER, SimpleType.FLOAT, SimpleType.STRING}
)

Send = Callable[[pb.WatchForUpdatesResponse], Awaitable[None]]


async def _send_each(send: Send, responses: list[pb.WatchForUpdatesResponse]) -> None:
    for response in responses:
        await send(response)


def _too_large(exc: TooLarge) -> RpcError:
    """``action too large to store: N bytes, the limit is M bytes``, with what is known."""
    parts = [] if exc.size is None else [f"{exc.size} bytes"]
    if exc.limit is not None:
        parts.append(f"the limit is {exc.limit} bytes")
    detail = f": {', '.join(parts)}" if parts else ""
    return RpcError(Code.INVALID_ARGUMENT, f"action too large to store{detail}")


@contextmanager
def _store_errors() -> Iterator[None]:
    """Store failures that no handler handles itself, as RPC errors: an unreachable store
    (or a change log that moved on) is UNAVAILABLE, for the client to retry; an object
    too big to store is INVALID_ARGUMENT (no retry can help, and clients such as the
    Flyte SDK give up on it); anything else the store refuses is INTERNAL, logged.

    That includes ``Invalid``: every object and annotation the service sends is built
    from a request that passed ``validate`` (names and label values encoded to fit,
    annotation values cut to ``MAX_ANNOTATION_CHARS``), so a store that still refuses
    one has found a bug in this service, not in the request."""
    try:
        yield
    except (StoreUnavailable, Gone) as exc:
        raise RpcError(Code.UNAVAILABLE, f"store unavailable: {exc}") from exc
    except TooLarge as exc:
        raise _too_large(exc) from exc
    except (Conflict, AlreadyExists, NotFound, OwnerTerminating):
        raise
    except StoreError as exc:
        log.exception("store rejected a request")
        raise RpcError(Code.INTERNAL, "store rejected the request") from exc


def _not_found(action_id: ActionIdentifier) -> RpcError:
    r = action_id.run
    return RpcError(
        Code.NOT_FOUND, f"action {r.org}/{r.project}/{r.domain}/{r.name}/{action_id.name} not found"
    )


def _with_status(obj: KubeObject, status: dict[str, Any]) -> KubeObject:
    return {
        "apiVersion": obj.get("apiVersion", naming.API_VERSION),
        "kind": obj.get("kind", naming.KIND),
        "metadata": obj["metadata"],
        "spec": obj.get("spec", {}),
        "status": status,
    }


def _rv_int(rv: str) -> int:
    """A list resourceVersion as an integer (etcd revisions and the embedded store's
    counter both are); 0 disables the snapshot filter for an opaque one."""
    try:
        return int(rv or 0)
    except ValueError:
        log.warning("non-numeric list resourceVersion %r; snapshot filter disabled", rv)
        return 0


class ActionsService:
    """The five RPCs over a ``Store`` and a running ``FanOut``.

    ``store`` and ``fanout`` may be bound later with ``bind`` (the app opens the store in
    its lifespan, after the routes are built); until then every call is UNAVAILABLE.
    """

    def __init__(
        self,
        store: Store | None = None,
        fanout: FanOut | None = None,
        *,
        namespace: str = "flyte",
        resolve_conditions: bool = True,
    ) -> None:
        self._store = store
        self._fanout = fanout
        self.namespace = namespace
        # No executor runs next to this service (``actions.executor: none``): Signal
        # resolves a condition itself, as Flyte's executor would.
        self.resolve_conditions = resolve_conditions

    def bind(self, store: Store | None, fanout: FanOut | None) -> None:
        self._store = store
        self._fanout = fanout

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RpcError(Code.UNAVAILABLE, "service is starting or stopping")
        return self._store

    # -- Enqueue -----------------------------------------------------------------------

    async def enqueue(self, request: pb.EnqueueRequest, ctx: RequestContext) -> pb.EnqueueResponse:
        validate(request)
        objects.check_fits(request)
        action = request.action
        if action.WhichOneof("spec") == objects.TYPE_CONDITION:
            ctype = action.condition.type
            if ctype.WhichOneof("type") != "simple" or ctype.simple not in _SIMPLE_CONDITION_TYPES:
                raise invalid(
                    "action.condition.type", "must be a simple bool, int, float or string"
                )
        store = self.store
        parent_name = objects.parent_name_of(action)
        parent: KubeObject | None = None
        with _store_errors():
            try:
                if parent_name:
                    pname = naming.parent_object_name(action.action_id.run, parent_name)
                    parent = await store.get(pname)
                    if parent["metadata"].get("deletionTimestamp"):
                        # What create would say (the owner is terminating), said early.
                        raise OwnerTerminating(pname)
                if objects.action_type_of(action) == objects.TYPE_TRACE:
                    if parent is None:
                        raise invalid("action.parent_action_name", "a trace needs a parent")
                    await store.create(objects.new_trace_object(request, self.namespace, parent))
                else:
                    new = objects.new_object(request, self.namespace, parent)
                    # Created with its starting phase in one step (create drops status).
                    status = objects.initial_status(new, action, timefmt.now())
                    await store.create_with_status(new, status)
            except AlreadyExists:
                raise RpcError(
                    Code.ALREADY_EXISTS, f"action {action.action_id.name!r} already exists"
                ) from None
            except OwnerTerminating:
                why = (
                    f"parent action {parent_name!r} is being deleted"
                    if parent_name
                    else "action was deleted while being enqueued"
                )
                raise RpcError(Code.ABORTED, why) from None
            except NotFound:  # the parent, read here or checked by create
                raise RpcError(Code.NOT_FOUND, f"parent action {parent_name!r} not found") from None
            except Conflict:
                raise RpcError(Code.ABORTED, "too many concurrent writes; retry") from None
        return pb.EnqueueResponse()

    # -- Update ------------------------------------------------------------------------

    async def update(self, request: pb.UpdateRequest, ctx: RequestContext) -> pb.UpdateResponse:
        validate(request)
        name = naming.object_name(request.action_id)
        await self._write_status(
            name,
            request.action_id,
            lambda obj: transitions.apply_update(obj, request.attempt, request.status),
        )
        return pb.UpdateResponse()

    async def _write_status(
        self,
        name: str,
        action_id: ActionIdentifier,
        change: Callable[[KubeObject], dict[str, Any] | None],
    ) -> None:
        """Read, compute, write through the status subresource; on Conflict start over
        from a fresh read so that no concurrent write is lost."""
        store = self.store
        give_up = trio.current_time() + CONFLICT_RETRY_SECONDS
        with _store_errors():
            for attempt in itertools.count():
                try:
                    obj = await store.get(name)
                except NotFound:
                    raise _not_found(action_id) from None
                status = change(obj)
                if status is None:
                    return
                try:
                    await store.update_status(_with_status(obj, status))
                    return
                except Conflict:
                    if trio.current_time() >= give_up:
                        break
                    if attempt >= 1:
                        ceiling = min(CONFLICT_BACKOFF_CAP, 0.001 * 2**attempt)
                        await trio.sleep(random.uniform(0, ceiling))
                except NotFound:
                    raise _not_found(action_id) from None
        raise RpcError(Code.ABORTED, "too many concurrent writes; retry")

    # -- Abort -------------------------------------------------------------------------

    async def abort(self, request: pb.AbortRequest, ctx: RequestContext) -> pb.AbortResponse:
        validate(request)
        store = self.store
        action_id = request.action_id
        name = naming.object_name(action_id)
        annotations = {naming.ANNOTATION_ABORT_REASON: request.reason[:MAX_ANNOTATION_CHARS]}
        aborted_by = ""
        if request.HasField("aborted_by"):
            aborted_by = json_format.MessageToJson(request.aborted_by, indent=None)
            annotations[naming.ANNOTATION_ABORTED_BY] = aborted_by[:MAX_ANNOTATION_CHARS]
        with _store_errors():
            try:
                await store.patch_annotations(name, annotations)
            except NotFound:
                raise _not_found(action_id) from None
            except TooLarge:
                # No room left on the object for the reason (the log below keeps it): an
                # abort must not fail for that.
                log.warning("action %s too large to record the abort reason on", name)
            log.info(
                "aborting action %s: reason=%r aborted_by=%s", name, request.reason, aborted_by
            )
            try:
                await store.delete(name, "Background")
            except NotFound:
                pass  # deleted by someone else after we marked it: it is gone either way
        return pb.AbortResponse()

    # -- Signal ------------------------------------------------------------------------

    async def signal(self, request: pb.SignalRequest, ctx: RequestContext) -> pb.SignalResponse:
        validate(request)
        action_id = request.action_id
        signalled_by = request.signalled_by if request.HasField("signalled_by") else None

        def change(obj: KubeObject) -> dict[str, Any] | None:
            if obj.get("spec", {}).get("parentActionName") != request.parent_action_name:
                raise RpcError(
                    Code.NOT_FOUND,
                    f"action {action_id.name!r} is not a child of {request.parent_action_name!r}",
                )
            return transitions.apply_signal(
                obj, request.value, signalled_by, resolve=self.resolve_conditions
            )

        await self._write_status(naming.object_name(action_id), action_id, change)
        return pb.SignalResponse()

    # -- WatchForUpdates ---------------------------------------------------------------

    async def watch_for_updates(
        self, request: pb.WatchForUpdatesRequest, ctx: RequestContext, send: Send
    ) -> None:
        validate(request)
        fanout = self._fanout
        if fanout is None:
            raise RpcError(Code.UNAVAILABLE, "service is starting or stopping")
        parent_id = request.parent_action_id
        # Subscribe first, then read: a change between the two is in the buffer, and one
        # already in the snapshot is dropped by resourceVersion (min_rv).
        with fanout.subscribe(objects.WatchKey.for_parent(parent_id)) as sub:
            snapshot, list_rv = await self._snapshot(parent_id)
            sub.min_rv = list_rv
            # The server's send writes a list in one body write when it can
            # (connect_proto's ``send.many``); any other send gets them one by one.
            send_many = getattr(send, "many", None)
            if send_many is None:
                send_many = partial(_send_each, send)
            snapshot.append(objects.SENTINEL)
            await send_many(snapshot)
            # Not held while the stream waits for changes (for its whole life): a parent
            # with many children made every one of its watchers keep a copy.
            del snapshot
            while True:
                await send_many(await sub.next_batch())

    async def _snapshot(
        self, parent_id: ActionIdentifier
    ) -> tuple[list[pb.WatchForUpdatesResponse], int]:
        store = self.store
        key = objects.WatchKey.for_parent(parent_id)
        with _store_errors():
            children, list_rv = await store.list(naming.children_selector(parent_id))
            try:
                parent: KubeObject | None = await store.get(
                    naming.parent_object_name(parent_id.run, parent_id.name)
                )
            except NotFound:
                parent = None
        out: list[pb.WatchForUpdatesResponse] = []
        if parent is not None and objects.action_id_of(parent) == parent_id:
            out.append(objects.watch_response(parent, self.namespace))
        for child in children:
            # Labels may be hashed; the spec is the exact identity.
            if objects.watch_key_of(child) == key:
                out.append(objects.watch_response(child, self.namespace))
        return out, _rv_int(list_rv)
