"""``flyte_actions.console.v1.ConsoleService``: ListRuns and GetRun over a ``Store``.

ListRuns pages through the store's roots (``Store.list_roots``: one root per run, newest
first, answered from memory), so a page costs the runs it shows plus those the filters
skip, never a scan of every action. Filters on labels (org, project, domain) are applied
by the store before anything is decoded; the phase filter needs the object, so a request
reads at most ``SCAN_BUDGET`` roots: a page may then hold fewer runs than asked for (even
none) with a token to go on, as Google's AIP-158 allows. The page token is opaque to
clients: the position in the creation order plus a digest of the filters it belongs to.

GetRun lists one run's actions by its labels (cost: that run).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Final

import trio

from actions import naming, objects, phases
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.console.views import action_view, metadata_time, run_summary, tree_order
from actions.service import _store_errors
from actions.store.base import KubeObject, RootCursor, Store
from connect_proto import Code, RequestContext, RpcError

SERVICE_DESCRIPTOR: Final = cpb.DESCRIPTOR.services_by_name["ConsoleService"]
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
# Roots one ListRuns call may read (decode) while the phase filter skips them: about 25 ms
# of work at most (docs/console.md), in slices of one page between checkpoints.
SCAN_BUDGET: Final = 500
_PHASE_NAMES: Final = frozenset(phases.name(p) for p in phases.KNOWN if p != phases.UNSPECIFIED)


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
    """Labels may be hashed; the spec is exact."""
    spec = obj.get("spec") or {}
    return all(
        not wanted or spec.get(key) == wanted
        for key, wanted in (
            ("org", request.org),
            ("project", request.project),
            ("domain", request.domain),
        )
    )


class ConsoleService:
    """The read API over the store ``current_store`` returns: the app's, which is None
    outside its lifespan (then every call is UNAVAILABLE)."""

    def __init__(self, current_store: Callable[[], Store | None]) -> None:
        self._current_store = current_store

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
        missing = [f"run.{f}" for f in ("project", "domain", "name") if not getattr(run, f)]
        if missing:
            raise RpcError(Code.INVALID_ARGUMENT, f"{', '.join(missing)}: must be set")
        labels = {
            naming.LABEL_PROJECT: naming.label_value(run.project),
            naming.LABEL_DOMAIN: naming.label_value(run.domain),
            naming.LABEL_RUN: naming.label_value(run.name),
        }
        if run.org:
            labels[naming.LABEL_ORG] = naming.label_value(run.org)
        with _store_errors():
            found, _ = await self.store.list(labels)
        identity = (run.org, run.project, run.domain, run.name)
        views = [action_view(obj) for obj in found if _identity(obj) == identity]
        if not views:
            raise RpcError(
                Code.NOT_FOUND,
                f"run {run.org}/{run.project}/{run.domain}/{run.name} not found",
            )
        return cpb.GetRunResponse(run=run, actions=tree_order(views))


def _identity(obj: KubeObject) -> tuple[str, str, str, str]:
    spec = obj.get("spec") or {}
    return (
        objects.org_of(obj),
        str(spec.get("project", "")),
        str(spec.get("domain", "")),
        str(spec.get("runName", "")),
    )
