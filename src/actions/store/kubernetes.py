"""The Kubernetes backend: TaskAction custom resources through the official client.

- Requests go through ``CustomObjectsApi`` (group flyte.org, version v1, plural
  taskactions) in worker threads (``trio.to_thread.run_sync`` with a limiter sized to the
  connection pool), after a client-side token bucket (qps/burst, as client-go) and with
  (connect, read) timeouts.
- The namespace is checked once in ``open`` (and created when missing, if allowed).
- ONE watch for the namespace runs in the informer thread (``_informer``); it feeds the
  ``latest()`` cache and every ``run_events`` channel.
- Errors come out as ``actions.store.errors``: 409 is split into AlreadyExists and
  Conflict by the Status reason; unreachable or failing servers are StoreUnavailable; an
  object the server cannot store (413, or etcd's size limit) is TooLarge, with the size of
  what was sent and ``_meta.MAX_OBJECT_BYTES`` as the limit.
- A resource the API server does not serve (its CRD deleted: a plain-text
  ``404 page not found``) is StoreUnavailable naming the CRD, not NotFound: the object
  may well exist once the CRD is back. ``ready()`` says so, and change streams end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

import trio
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from actions.store import _meta
from actions.store._informer import Informer, Sink
from actions.store._kube_client import (
    ClientSettings,
    TokenBucket,
    call,
    ensure_namespace,
    load_configuration,
    status_reason,
)
from actions.store.base import (
    KubeObject,
    PropagationPolicy,
    RootCursor,
    RootPage,
    WatchEvent,
)
from actions.store.errors import (
    Conflict,
    Invalid,
    NotFound,
    OwnerTerminating,
    ResourceMissing,
    StoreUnavailable,
    TooLarge,
)

log = logging.getLogger(__name__)

__all__ = ["ClientSettings", "KubernetesStore"]

_Objects = list[KubeObject]  # (``list`` is also a method name in the class below)

# create_with_status: status writes that lose to another writer before giving up.
_STATUS_RETRIES = 32


@contextmanager
def _sized(body: KubeObject | None) -> Iterator[None]:
    """A TooLarge from the server (which says no size) with the size of ``body`` and the
    object limit, as the embedded store reports it."""
    try:
        yield
    except TooLarge as exc:
        size = None if body is None else _meta.object_size(body)
        raise TooLarge(str(exc), size=size, limit=_meta.MAX_OBJECT_BYTES) from exc


class KubernetesStore:
    """A ``Store`` on a Kubernetes API server. Create it with ``await KubernetesStore.open()``."""

    def __init__(
        self,
        *,
        namespace: str,
        api_client: client.ApiClient,
        owns_client: bool,
        settings: ClientSettings,
        history: int,
        prepare: Any = None,
    ) -> None:
        self.namespace = namespace
        self._owns_client = owns_client
        self._settings = settings
        self._api_client = api_client
        self._api = client.CustomObjectsApi(api_client)
        self._bucket = TokenBucket(settings.qps, settings.burst)
        self._limiter = trio.CapacityLimiter(settings.max_concurrent_requests)
        self._informer = Informer(
            self._api,
            namespace,
            settings,
            self._bucket,
            trio.lowlevel.current_trio_token(),
            history=history,
            prepare=prepare,
        )
        # Traces (kind TraceAction) have a watch of their own; their events join the
        # TaskActions' in ``run_events``. etcd's resourceVersions are one counter for all
        # kinds, so both watches resume from the same ``since``.
        self._trace_informer = Informer(
            self._api,
            namespace,
            settings,
            self._bucket,
            trio.lowlevel.current_trio_token(),
            history=history,
            plural=_meta.TRACE_PLURAL,
        )
        self._informers = (self._informer, self._trace_informer)
        self._closed = trio.Event()

    @classmethod
    async def open(
        cls,
        namespace: str = "flyte",
        *,
        settings: ClientSettings | None = None,
        api_client: client.ApiClient | None = None,
        create_namespace: bool = True,
        history: int = 10_000,
        sync_timeout: float = 30.0,
        wait_for_sync: bool = True,
    ) -> KubernetesStore:
        """Connect, check the namespace, start the watch, and wait for its first list.

        ``api_client`` overrides the configuration ``settings`` would load (kubeconfig or
        in-cluster). ``history`` is how many recent events ``run_events(since=...)`` can
        replay. Raises StoreUnavailable when the API server cannot be reached within
        ``sync_timeout`` or the namespace is missing and cannot be created.

        ``wait_for_sync=False`` (a server that must come up while the API server is
        away): returns at once; the namespace check and the first list run in the watch
        thread, retried with backoff, and ``ready()`` says what is missing meanwhile.
        Requests fail with StoreUnavailable while the API server is out of reach.
        """
        settings = settings or ClientSettings()
        owns_client = api_client is None
        if api_client is None:
            configuration = await trio.to_thread.run_sync(load_configuration, settings)
            api_client = client.ApiClient(configuration)
        prepare = None
        if not wait_for_sync:
            prepare = partial(
                ensure_namespace, api_client, namespace, create_namespace, settings.timeouts
            )
        store = cls(
            namespace=namespace,
            api_client=api_client,
            owns_client=owns_client,
            settings=settings,
            history=history,
            prepare=prepare,
        )
        if not wait_for_sync:
            store._informer.start()
            store._trace_informer.start()
            return store
        try:
            await store._check_namespace(create_namespace)
            for informer in store._informers:
                informer.start()
            deadline = trio.current_time() + sync_timeout
            for informer, plural in zip(store._informers, _meta.PLURALS.values(), strict=True):
                listed = False
                while not listed and trio.current_time() < deadline:
                    if informer.resource_missing:  # not worth waiting for: say so now
                        raise StoreUnavailable(informer.last_error or f"{plural} not served")
                    left = min(0.5, deadline - trio.current_time())
                    listed = await trio.to_thread.run_sync(
                        informer.wait_listed, left, abandon_on_cancel=True
                    )
                if not listed:
                    raise StoreUnavailable(
                        f"could not list {plural} in {namespace!r} within {sync_timeout}s: "
                        f"{informer.last_error}"
                    )
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    # -- readiness --------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """The cache holds a complete list and the watch follows it."""
        return all(informer.synced for informer in self._informers)

    @property
    def api_reachable(self) -> bool:
        """The watch's last contact with the API server succeeded."""
        return self._informer.api_reachable

    def ready(self) -> tuple[bool, str]:
        """Readiness for ``/readyz``: ``(True, "ok")`` once the watch cache holds a full
        list and the API server answers; otherwise False and what is missing."""
        if self._closed.is_set():
            return False, "store closed"
        if not self._informer.api_reachable:
            error = self._informer.last_error or "no contact yet"
            return False, f"Kubernetes API server unreachable or failing: {error}"
        for informer in self._informers:
            if informer.resource_missing:
                return False, informer.last_error or f"{informer.resource} not served"
        if not self._informer.synced:
            return False, "watch cache not synced (listing taskactions)"
        if not self._trace_informer.synced:
            return False, "watch cache not synced (listing actiontraces)"
        return True, "ok"

    @property
    def last_error(self) -> str | None:
        return self._informer.last_error

    @property
    def relists(self) -> int:
        """How often the watch had to re-list (410 Gone) since start-up: a health metric."""
        return self._informer.relists

    # -- requests ---------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any, plural: str = _meta.PLURAL, **kwargs: Any) -> Any:
        """``fn``, a ``CustomObjectsApi`` method on namespaced objects, on this store's
        taskactions (or ``plural``): group, version, namespace and plural come before
        ``args``."""
        if self._closed.is_set():
            raise StoreUnavailable("the store is closed")
        delay = self._bucket.reserve()
        if delay:
            await trio.sleep(delay)
        kwargs.setdefault("_request_timeout", self._settings.timeouts)
        coordinates = (_meta.GROUP, _meta.VERSION, self.namespace, plural)
        try:
            return await trio.to_thread.run_sync(
                partial(call, fn, *coordinates, *args, **kwargs), limiter=self._limiter
            )
        except NotFound as exc:
            if not _resource_not_served(exc):
                raise
            # Reported by the informer of the same resource, which meets the same 404 on
            # its list or watch: one cause, one line, even when a read finds it first.
            raise ResourceMissing(
                f"CustomResourceDefinition {plural}.{_meta.GROUP} not found on the API server "
                f"{self._api_client.configuration.host} ({str(exc).strip()}); is it installed?"
            ) from exc

    async def _check_namespace(self, create: bool) -> None:
        timeouts = self._settings.timeouts
        ensure = partial(ensure_namespace, self._api_client, self.namespace, create, timeouts)
        await trio.to_thread.run_sync(ensure, limiter=self._limiter)

    async def create(self, obj: KubeObject) -> KubeObject:
        _meta.validate_new_object(obj, self.namespace)
        for ref in obj["metadata"].get("ownerReferences") or []:
            await self._check_owner(ref)
        body = _meta.copy_json(obj)
        body["metadata"]["namespace"] = self.namespace
        plural = _meta.PLURALS[body["kind"]]
        with _sized(body):
            created = await self._call(
                self._api.create_namespaced_custom_object, body, plural=plural
            )
        return self._shown(created)

    async def create_with_status(self, obj: KubeObject, status: dict[str, Any]) -> KubeObject:
        """``create``, then ``status`` through the status subresource (two requests: the
        API server has no single call for both). Unless someone else wrote a status in
        between, which is then kept. An object its status makes too large is deleted
        again, so that the refusal leaves nothing behind; one deleted in between (its
        owner went away) raises OwnerTerminating."""
        current = await self.create(obj)
        name = current["metadata"]["name"]
        try:
            for _ in range(_STATUS_RETRIES):
                if current.get("status"):
                    return current
                try:
                    return await self.update_status({**current, "status": status})
                except Conflict:
                    current = await self.get(name)
        except TooLarge:
            with suppress(NotFound):
                await self.delete(name)
            raise
        except NotFound:
            raise OwnerTerminating(f"{_meta.RESOURCE} {name!r} was deleted at once") from None
        raise Conflict(_meta.conflict_message(name))

    def _shown(self, obj: KubeObject) -> KubeObject:
        """Tell the informer what the API server just showed us (see ``Informer.note``)."""
        self._informer_of(obj).note([obj])
        return obj

    def _informer_of(self, obj: KubeObject) -> Informer:
        return self._trace_informer if obj.get("kind") == _meta.TRACE_KIND else self._informer

    async def _check_owner(self, ref: dict[str, Any]) -> None:
        """The API server accepts a dangling owner (its GC then collects the new object);
        the Store contract wants NotFound / OwnerTerminating instead. Asked of the server,
        not the cache: a lagging cache could still show an owner that was just deleted
        or replaced."""
        try:
            owner = await self.get(ref["name"])
        except NotFound:
            raise NotFound(f"owner {_meta.not_found_message(ref['name'])}") from None
        if owner["metadata"]["uid"] != ref["uid"]:
            raise NotFound(f"owner {_meta.not_found_message(ref['name'])} (uid changed)")
        if owner["metadata"].get("deletionTimestamp"):
            raise OwnerTerminating(f'owner {_meta.RESOURCE} "{ref["name"]}" is being deleted')

    async def get(self, name: str) -> KubeObject:
        obj = await self._call(self._api.get_namespaced_custom_object, name)
        return self._shown(obj)

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        """TaskActions and TraceActions with ``labels``; the resourceVersion is the older
        of the two lists' (events after it may repeat what is listed, none is missed)."""
        _meta.validate_labels(labels)
        items, list_rv = await self._list_kind(labels, _meta.PLURAL, self._informer)
        traces, trace_rv = await self._list_kind(labels, _meta.TRACE_PLURAL, self._trace_informer)
        items.extend(traces)
        return items, str(min(int(list_rv), int(trace_rv)))

    async def _list_kind(
        self, labels: dict[str, str], plural: str, informer: Informer
    ) -> tuple[_Objects, str]:
        selector = _meta.label_selector(labels)
        items: _Objects = []
        token: str | None = None
        while True:  # pages of one snapshot, so one resourceVersion for the whole list
            kwargs: dict[str, Any] = {"limit": 500, "plural": plural}
            if selector:
                kwargs["label_selector"] = selector
            if token:
                kwargs["_continue"] = token
            page = await self._call(self._api.list_namespaced_custom_object, **kwargs)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                list_rv: str = page["metadata"]["resourceVersion"]
                informer.note(items, as_of=int(list_rv))
                return items, list_rv

    async def list_roots(
        self, labels: dict[str, str], *, limit: int, before: RootCursor | None = None
    ) -> RootPage:
        """From the informer's cache (as fresh as its watch), not the API server: a page
        of runs must not cost a list of every TaskAction."""
        _meta.validate_labels(labels)
        if not self._informer.synced:
            self._raise_if_missing()
            raise StoreUnavailable("the watch cache has not synced yet")
        await trio.lowlevel.checkpoint()
        return self._informer.roots_page(labels, max(limit, 1), before)

    async def update_status(self, obj: KubeObject) -> KubeObject:
        meta = obj.get("metadata") or {}
        if not meta.get("resourceVersion"):
            raise Invalid("metadata.resourceVersion: must be specified for an update")
        with _sized(obj):
            updated = await self._call(
                self._api.replace_namespaced_custom_object_status, meta["name"], obj
            )
        return self._shown(updated)

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        _meta.validate_annotations(annotations)
        if not annotations:
            return await self.get(name)  # nothing to merge; no write, as in the embedded store
        # A dict body goes out as a JSON merge patch (the client's default for CRs).
        with _sized(None):  # the patched object's size is the server's to know
            patched = await self._either_kind(
                self._api.patch_namespaced_custom_object,
                name,
                {"metadata": {"annotations": annotations}},
            )
        return self._shown(patched)

    async def _either_kind(self, fn: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        """``fn`` on the TaskAction ``name``, else on the TraceAction of that name (names
        are unique across both: they derive from the action's identity)."""
        try:
            return await self._call(fn, name, *args, **kwargs)
        except NotFound:
            return await self._call(fn, name, *args, plural=_meta.TRACE_PLURAL, **kwargs)

    async def delete(self, name: str, propagation: PropagationPolicy = "Background") -> None:
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise Invalid(f"propagationPolicy: Unsupported value: {propagation!r}")
        # Explicit policy in the body (a body makes the server ignore query options).
        await self._either_kind(
            self._api.delete_namespaced_custom_object, name, body={"propagationPolicy": propagation}
        )

    # -- cache and change stream --------------------------------------------------------

    async def latest(self, name: str) -> KubeObject | None:
        obj = self._informer.get(name)
        return obj if obj is not None else self._trace_informer.get(name)

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        since: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._closed.is_set():
            raise StoreUnavailable("the store is closed")
        if since is not None and not since.isdigit():
            raise Invalid(f"resourceVersion: Invalid value: {since!r}")
        self._raise_if_missing()
        lost = trio.Event()  # set by an informer that cannot go on (its CRD went away)
        if since is None:
            # "From now": the watch may still be delivering writes made before this call;
            # the API server's current resourceVersion tells them apart, so run_events
            # starts exactly where the embedded store's does.
            sinks = [Sink(send, 0, lost) for _ in self._informers]
            try:
                now = await self._call(self._api.list_namespaced_custom_object, limit=1)
            except StoreUnavailable as exc:
                # Out of reach (starting without the API server, or it went away): start
                # from what the watch has handed out so far instead. Nothing written
                # later is missed; a few earlier writes may be sent too.
                log.info("starting the change stream from the watch cache: %s", exc)
            else:
                for sink in sinks:
                    sink.since = int(now["metadata"]["resourceVersion"])
            start: int | None = None
        else:
            start = int(since)
            sinks = [Sink(send, start, lost) for _ in self._informers]
        registered: list[tuple[Informer, Sink]] = []
        try:
            backlog: list[WatchEvent] = []
            for informer, sink in zip(self._informers, sinks, strict=True):
                backlog.extend(informer.register(sink, start))
                registered.append((informer, sink))
            backlog.sort(key=lambda e: int(e.resource_version))
            task_status.started()
            for event in backlog:
                await send.send(event)
            for sink in sinks:
                sink.ready.set()
            await _first_set(self._closed, lost)
            if lost.is_set():
                reason = next(sink.lost_reason for sink in sinks if sink.lost_reason)
                raise StoreUnavailable(f"change stream ended: {reason}")
            raise StoreUnavailable("the store was closed")
        finally:
            for informer, sink in registered:
                informer.unregister(sink)

    def _raise_if_missing(self) -> None:
        for informer in self._informers:
            if informer.resource_missing:
                raise StoreUnavailable(informer.last_error or f"{informer.resource} not served")

    # -- shutdown -----------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for informer in self._informers:
            with trio.move_on_after(10):
                while True:
                    informer.request_stop()
                    if await trio.to_thread.run_sync(informer.join, 0.02):
                        break
        if self._owns_client:
            await trio.to_thread.run_sync(self._api_client.close)


def _resource_not_served(exc: NotFound) -> bool:
    """A 404 that is not about an object: the API server has no such resource (Go's
    plain ``404 page not found``, or a Status without the object's reason and details)."""
    cause = exc.__cause__
    if not isinstance(cause, ApiException):
        return False
    return status_reason(cause) != "NotFound"


async def _first_set(*events: trio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)
