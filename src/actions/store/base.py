"""The store interface: Kubernetes object semantics that every backend provides.

Objects are plain dicts shaped like Kubernetes custom resources
(``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``) so that the Kubernetes
backend passes them through unchanged and the embedded backend mimics the API server.
``metadata.resourceVersion`` is a string, as in Kubernetes; the embedded store uses a
single increasing integer counter rendered as a decimal string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio

KubeObject = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
PropagationPolicy = Literal["Background", "Foreground", "Orphan"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: the whole object after it (for DELETED, its last state)."""

    type: EventType
    object: KubeObject

    @property
    def name(self) -> str:
        return self.object["metadata"]["name"]

    @property
    def resource_version(self) -> str:
        return self.object["metadata"]["resourceVersion"]


class Store(Protocol):
    """An async, namespaced object store with Kubernetes semantics."""

    namespace: str

    async def create(self, obj: KubeObject) -> KubeObject:
        """Create; server-owned metadata is filled in. Raises AlreadyExists, NotFound
        (an ownerReference names a missing owner) or OwnerTerminating."""
        ...

    async def create_with_status(self, obj: KubeObject, status: dict[str, Any]) -> KubeObject:
        """``create``, then ``status`` written through the status subresource (an ADDED
        and a MODIFIED event). The embedded store does both in one transaction; the
        Kubernetes backend in two requests, keeping a status someone else wrote in
        between. Raises what create raises, TooLarge (nothing is left behind), or
        OwnerTerminating (the object was deleted at once with its owner)."""
        ...

    async def get(self, name: str) -> KubeObject:
        """Raises NotFound."""
        ...

    async def list(self, labels: dict[str, str]) -> tuple[list[KubeObject], str]:
        """Objects whose labels include all of ``labels``, and the list's resourceVersion."""
        ...

    async def update_status(self, obj: KubeObject) -> KubeObject:
        """Replace ``status`` of ``obj`` (through the status subresource), guarded by
        ``obj.metadata.resourceVersion``. Raises Conflict or NotFound."""
        ...

    async def patch_annotations(self, name: str, annotations: dict[str, str]) -> KubeObject:
        """Merge annotations into metadata. Raises NotFound."""
        ...

    async def delete(self, name: str, propagation: PropagationPolicy = "Background") -> None:
        """Delete the object; its descendants through ownerReferences go too (and each
        emits a DELETED event). Raises NotFound."""
        ...

    async def run_events(
        self,
        send: trio.MemorySendChannel[WatchEvent],
        *,
        since: str | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The single change stream: runs until cancelled, sending every ADDED, MODIFIED
        and DELETED event in the order the store applied them. Event objects may be
        shared with other followers: read them, never change them. ``send`` applies
        backpressure. Calls ``task_status.started()`` once it is following changes, so
        that a caller that waited for it misses nothing written afterwards.

        ``since`` (a resourceVersion, e.g. a list's) resumes: exactly the changes after
        it are sent. Raises Gone (before ``started()`` or later, if the stream falls
        behind the retained change log) when those changes are no longer held; the
        caller then re-lists and resumes from the new list's resourceVersion."""
        ...

    async def latest(self, name: str) -> KubeObject | None:
        """The freshest known state of an object (an informer cache in Kubernetes), or
        None if it is gone."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether the store can serve now, for readiness probes (``/readyz``): ``(True,
        "ok")``, or ``(False, why)`` (API server unreachable, watch cache not synced yet,
        store closed). Cheap and non-blocking: it reads state the store keeps."""
        ...

    async def aclose(self) -> None: ...
