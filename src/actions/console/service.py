"""``flyte_actions.console.v1.ConsoleService``: ListRuns and GetRun over a ``Store``.

ListRuns pages through the store's roots (``Store.list_roots``: one root per run, newest
first, answered from memory), so a page costs the runs it shows plus those the filters
skip, never a scan of every action. Filters on labels (org, project, domain) are applied
by the store before anything is decoded; the phase filter needs the object, so a request
reads at most ``SCAN_BUDGET`` roots: a page may then hold fewer runs than asked for (even
none) with a token to go on, as Google's AIP-158 allows. The page token is opaque to
clients: the position in the creation order plus a digest of the filters it belongs to.

GetRun lists one run's actions by its labels (cost: that run); GetAction reads one
object by name (or, for an action deleted lately, its last state: ``RecentDeletions``).

WatchRun and WatchRuns are the live forms, fed by the watch fan-out (``actions.fanout``)
as WatchForUpdates is: subscribe first (the run's ``RunKey``, or ``ROOTS``), then read
the snapshot, then send each buffered store event as a view. One event costs one
object turned into a view, never a re-read; a stream that falls behind is ended with
UNAVAILABLE by the fan-out and reconnects for a fresh snapshot. The app bounds how many
are open at once (``MAX_WATCH_RUN_STREAMS``, ``MAX_WATCH_RUNS_STREAMS``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import trio

from actions import naming, objects, phases
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.console.recent import RecentDeletions
from actions.console.views import action_view, metadata_time, run_id_of, run_summary, tree_order
from actions.fanout import ROOTS, FanOut, RunKey
from actions.service import _store_errors
from actions.store.base import KubeObject, RootCursor, Store, WatchEvent
from actions.store.errors import NotFound
from connect_proto import Code, RequestContext, RpcError

SERVICE_DESCRIPTOR: Final = cpb.DESCRIPTOR.services_by_name["ConsoleService"]
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
# Roots one ListRuns call may read (decode) while the phase filter skips them: about 25 ms
# of work at most (docs/console.md), in slices of one page between checkpoints.
SCAN_BUDGET: Final = 500
_PHASE_NAMES: Final = frozenset(phases.name(p) for p in phases.KNOWN if p != phases.UNSPECIFIED)
# Console streams open at once, per method (beyond: RESOURCE_EXHAUSTED). A browser tab
# opens one of each; these leave room for hundreds of operators.
MAX_WATCH_RUN_STREAMS: Final = 1_000
MAX_WATCH_RUNS_STREAMS: Final = 1_000
# Runs whose last summary a WatchRuns stream remembers, to not send the same one twice
# (a root's status changes that the summary does not show).
_SENT_RUNS_MEMORY: Final = 10_000

M = TypeVar("M")
Send = Callable[[M], Awaitable[None]]


async def _send_all(send: Send[M], messages: Sequence[M]) -> None:
    """In one body write when the server's send can (connect_proto's ``send.many``)."""
    many = getattr(send, "many", None)
    if many is not None:
        await many(list(messages))
        return
    for message in messages:
        await send(message)


def _rv_int(rv: str) -> int:
    try:
        return int(rv or 0)
    except ValueError:
        return 0  # an opaque resourceVersion: no snapshot filter (duplicates, no loss)


def _digest(message: cpb.ActionView | cpb.RunSummary) -> bytes:
    return message.SerializeToString(deterministic=True)


def _check_run(run: cpb.RunId) -> None:
    missing = [f"run.{f}" for f in ("project", "domain", "name") if not getattr(run, f)]
    if missing:
        raise RpcError(Code.INVALID_ARGUMENT, f"{', '.join(missing)}: must be set")


def _run_labels(run: cpb.RunId) -> dict[str, str]:
    labels = {
        naming.LABEL_PROJECT: naming.label_value(run.project),
        naming.LABEL_DOMAIN: naming.label_value(run.domain),
        naming.LABEL_RUN: naming.label_value(run.name),
    }
    if run.org:
        labels[naming.LABEL_ORG] = naming.label_value(run.org)
    return labels


def _run_text(run: cpb.RunId) -> str:
    return f"{run.org}/{run.project}/{run.domain}/{run.name}"


def _filters_key(request: cpb.ListRunsRequest) -> str:
    """The filters a page token was issued for (a token is refused with others)."""
    parts = [
        request.org,
        request.project,
        request.domain,
        ",".join(sorted(request.phases)),
        request.created_after.ToJsonString() if request.HasField("created_after") else "",
        request.created_before.ToJsonString() if request.HasField("created_before") else "",
    ]
    return naming.short_hash("\x00".join(parts))


def encode_token(cursor: RootCursor, filters: str) -> str:
    raw = json.dumps([cursor[0], cursor[1], filters], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str, filters: str) -> RootCursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, name, issued_for = json.loads(raw)
        if not all(isinstance(x, str) for x in (created, name, issued_for)):
            raise ValueError("not a token")
    except (ValueError, TypeError, binascii.Error):
        raise RpcError(
            Code.INVALID_ARGUMENT, "page_token: not a token this service issued"
        ) from None
    if issued_for != filters:
        raise RpcError(
            Code.INVALID_ARGUMENT, "page_token: issued for other filters; start from page one"
        )
    return created, name


def _phase_filter(names: list[str]) -> frozenset[str]:
    wanted = set()
    for raw in names:
        name = raw.strip().upper().removeprefix("ACTION_PHASE_")
        if name not in _PHASE_NAMES:
            choices = ", ".join(sorted(_PHASE_NAMES))
            raise RpcError(Code.INVALID_ARGUMENT, f"phases: unknown phase {raw!r} ({choices})")
        wanted.add(name)
    return frozenset(wanted)


def _label_filter(request: cpb.ListRunsRequest) -> dict[str, str]:
    labels = {}
    for label, value in (
        (naming.LABEL_ORG, request.org),
        (naming.LABEL_PROJECT, request.project),
        (naming.LABEL_DOMAIN, request.domain),
    ):
        if value:
            labels[label] = naming.label_value(value)
    return labels


def _time_filter(request: cpb.ListRunsRequest, field: str) -> str:
    """The time filter ``field`` in creationTimestamp's format; "" when unset."""
    if not request.HasField(field):
        return ""
    try:
        return metadata_time(getattr(request, field))
    except (ValueError, OverflowError, OSError):
        raise RpcError(Code.INVALID_ARGUMENT, f"{field}: not a valid time") from None


def _phase_name(obj: KubeObject) -> str:
    return phases.name(objects.phase_of_object(obj))


def _spec_matches(obj: KubeObject, request: cpb.ListRunsRequest) -> bool:
    """Labels may be hashed; the spec (and the org's annotation: the spec has no org)
    is exact."""
    spec = obj.get("spec") or {}
    return all(
        not wanted or have == wanted
        for have, wanted in (
            (objects.org_of(obj), request.org),
            (spec.get("project"), request.project),
            (spec.get("domain"), request.domain),
        )
    )


class ConsoleService:
    """The read API over the store ``current_store`` returns and the fan-out
    ``current_fanout`` returns: the app's, which are None outside its lifespan (then
    every call is UNAVAILABLE). ``recent`` must observe the fan-out's events."""

    def __init__(
        self,
        current_store: Callable[[], Store | None],
        current_fanout: Callable[[], FanOut | None] = lambda: None,
        recent: RecentDeletions | None = None,
    ) -> None:
        self._current_store = current_store
        self._current_fanout = current_fanout
        self.recent = recent if recent is not None else RecentDeletions()

    @property
    def fanout(self) -> FanOut:
        fanout = self._current_fanout()
        if fanout is None:
            raise RpcError(Code.UNAVAILABLE, "service is starting or stopping")
        return fanout

    @property
    def store(self) -> Store:
        store = self._current_store()
        if store is None:
            raise RpcError(Code.UNAVAILABLE, "service is starting or stopping")
        return store

    async def list_runs(
        self, request: cpb.ListRunsRequest, ctx: RequestContext
    ) -> cpb.ListRunsResponse:
        if request.page_size < 0:
            raise RpcError(Code.INVALID_ARGUMENT, "page_size: must not be negative")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        wanted_phases = _phase_filter(list(request.phases))
        oldest = _time_filter(request, "created_after")
        newest = _time_filter(request, "created_before")
        filters = _filters_key(request)
        cursor: RootCursor | None = None
        if request.page_token:
            cursor = decode_token(request.page_token, filters)
        elif newest:
            # Older than the whole second it names: ("t", "") sorts before any ("t", name).
            cursor = (newest, "")
        labels = _label_filter(request)
        store = self.store
        response = cpb.ListRunsResponse()
        scanned = 0
        with _store_errors():
            while len(response.runs) < page_size and scanned < SCAN_BUDGET:
                want = min(page_size - len(response.runs), SCAN_BUDGET - scanned)
                roots, after = await store.list_roots(labels, limit=want, before=cursor)
                # Reading from memory never yields: let the fan-out run between pages.
                await trio.lowlevel.checkpoint()
                for root in roots:
                    scanned += 1
                    meta = root["metadata"]
                    created = str(meta.get("creationTimestamp") or "")
                    if created < oldest:
                        return response  # newest first: every later root is older still
                    cursor = (created, str(meta["name"]))
                    if not _spec_matches(root, request):
                        continue
                    if wanted_phases and _phase_name(root) not in wanted_phases:
                        continue
                    response.runs.append(run_summary(root))
                if after is None:
                    return response
                cursor = after
        if cursor is not None:
            response.next_page_token = encode_token(cursor, filters)
        return response

    async def get_run(self, request: cpb.GetRunRequest, ctx: RequestContext) -> cpb.GetRunResponse:
        run = request.run
        _check_run(run)
        views, _ = await self._run_views(run)
        return cpb.GetRunResponse(run=run, actions=views)

    async def _run_views(self, run: cpb.RunId) -> tuple[list[cpb.ActionView], int]:
        """The run's actions in tree order, and the list's resourceVersion."""
        with _store_errors():
            found, list_rv = await self.store.list(_run_labels(run))
        identity = (run.org, run.project, run.domain, run.name)
        views = [action_view(obj) for obj in found if _identity(obj) == identity]
        if not views:
            raise RpcError(Code.NOT_FOUND, f"run {_run_text(run)} not found")
        return tree_order(views), _rv_int(list_rv)

    async def get_action(
        self, request: cpb.GetActionRequest, ctx: RequestContext
    ) -> cpb.GetActionResponse:
        run = request.run
        _check_run(run)
        if not request.name:
            raise RpcError(Code.INVALID_ARGUMENT, "name: must be set")
        name = naming.object_name_for(run.org, run.project, run.domain, run.name, request.name)
        identity = (run.org, run.project, run.domain, run.name)

        def same(obj: KubeObject | None) -> bool:
            # Object names are hashed: the spec is the exact identity.
            return (
                obj is not None
                and _identity(obj) == identity
                and (obj.get("spec") or {}).get("actionName") == request.name
            )

        with _store_errors():
            try:
                obj: KubeObject | None = await self.store.get(name)
            except NotFound:
                obj = None
        if obj is not None and same(obj):
            return cpb.GetActionResponse(action=action_view(obj))
        last = self.recent.get(name)
        if last is not None and same(last):
            return cpb.GetActionResponse(action=action_view(last), deleted=True)
        raise RpcError(Code.NOT_FOUND, f"action {request.name!r} not found in run {_run_text(run)}")

    async def watch_run(
        self, request: cpb.WatchRunRequest, ctx: RequestContext, send: Send[cpb.WatchRunResponse]
    ) -> None:
        run = request.run
        _check_run(run)
        key = RunKey(run.org, run.project, run.domain, run.name)
        # Subscribe first, then read: a change between the two is in the buffer, and one
        # already in the snapshot is dropped by resourceVersion (min_rv).
        with self.fanout.subscribe_events(key) as sub:
            views, list_rv = await self._run_views(run)
            sub.min_rv = list_rv
            # name -> the view last sent: an event the view does not show (an executor's
            # plugin state) is not sent again.
            sent = {view.name: _digest(view) for view in views}
            snapshot = [cpb.WatchRunResponse(action=view) for view in views]
            snapshot.append(cpb.WatchRunResponse(snapshot_end=cpb.SnapshotEnd()))
            await _send_all(send, snapshot)
            while True:
                changes = _run_changes(await sub.next_batch(), sent)
                if changes:
                    await _send_all(send, changes)

    async def watch_runs(
        self, request: cpb.WatchRunsRequest, ctx: RequestContext, send: Send[cpb.WatchRunsResponse]
    ) -> None:
        if request.page_size < 0:
            raise RpcError(Code.INVALID_ARGUMENT, "page_size: must not be negative")
        filters = cpb.ListRunsRequest(
            org=request.org,
            project=request.project,
            domain=request.domain,
            phases=request.phases,
            page_size=request.page_size,
        )
        wanted = _phase_filter(list(request.phases))
        labels = _label_filter(filters)
        with self.fanout.subscribe_events(ROOTS) as sub:
            # The snapshot is not filtered by resourceVersion (the roots' order has
            # none): an event buffered meanwhile is sent after it unless it shows the
            # same summary, which at worst restates a run.
            page = await self.list_runs(filters, ctx)
            sent: OrderedDict[str, bytes] = OrderedDict(
                (_root_object_name(run), _digest(run)) for run in page.runs
            )
            snapshot = [cpb.WatchRunsResponse(run=run) for run in page.runs]
            snapshot.append(
                cpb.WatchRunsResponse(
                    snapshot_end=cpb.SnapshotEnd(next_page_token=page.next_page_token)
                )
            )
            await _send_all(send, snapshot)
            while True:
                changes = []
                for event in await sub.next_batch():
                    change = _runs_change(event, filters, labels, wanted, sent)
                    if change is not None:
                        changes.append(change)
                if changes:
                    await _send_all(send, changes)


def _identity(obj: KubeObject) -> tuple[str, str, str, str]:
    spec = obj.get("spec") or {}
    return (
        objects.org_of(obj),
        str(spec.get("project", "")),
        str(spec.get("domain", "")),
        str(spec.get("runName", "")),
    )


def _run_changes(events: list[WatchEvent], sent: dict[str, bytes]) -> list[cpb.WatchRunResponse]:
    out = []
    for event in events:
        view = action_view(event.object)
        if event.type == "DELETED":
            sent.pop(view.name, None)
            out.append(cpb.WatchRunResponse(deleted=view))
            continue
        digest = _digest(view)
        if sent.get(view.name) == digest:
            continue
        sent[view.name] = digest
        out.append(cpb.WatchRunResponse(action=view))
    return out


def _root_object_name(summary: cpb.RunSummary) -> str:
    run = summary.run
    return naming.object_name_for(run.org, run.project, run.domain, run.name, summary.root_action)


def _labels_match(obj: KubeObject, labels: dict[str, str]) -> bool:
    have = obj["metadata"].get("labels") or {}
    return all(have.get(label) == value for label, value in labels.items())


def _runs_change(
    event: WatchEvent,
    filters: cpb.ListRunsRequest,
    labels: dict[str, str],
    wanted: frozenset[str],
    sent: OrderedDict[str, bytes],
) -> cpb.WatchRunsResponse | None:
    """What a WatchRuns stream sends for one root's event, or None."""
    root = event.object
    if not _labels_match(root, labels) or not _spec_matches(root, filters):
        return None
    name = str(root["metadata"]["name"])
    if event.type == "DELETED" or (wanted and _phase_name(root) not in wanted):
        sent.pop(name, None)
        return cpb.WatchRunsResponse(removed=run_id_of(root))
    summary = run_summary(root)
    digest = _digest(summary)
    if sent.get(name) == digest:
        return None
    sent[name] = digest
    sent.move_to_end(name)
    while len(sent) > _SENT_RUNS_MEMORY:
        sent.popitem(last=False)
    return cpb.WatchRunsResponse(run=summary)
