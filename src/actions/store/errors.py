"""Store errors, defined once and raised by every backend."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store failure."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The object changed since the resourceVersion the write was based on."""


class OwnerTerminating(StoreError):
    """The owner named in ownerReferences is being deleted."""


class Invalid(StoreError):
    """The object breaks a rule the API server enforces (HTTP 422 / 400): a bad name,
    label or ownerReference, a resourceVersion on create, none on update_status."""


class Gone(StoreError):
    """A watch asked for a resourceVersion older than the retained history (HTTP 410)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached (API server down, throttled past the retry bound)."""


class ResourceMissing(StoreUnavailable):
    """The API server does not serve the resource (its CRD is not installed). The
    backend's watch of that resource meets the same answer and reports it, once; whoever
    else meets it need not log it again."""


class TooLarge(StoreError):
    """The object is bigger than the backend can store, so no retry can succeed.

    A Kubernetes API server refuses request bodies over 3 MiB (413 RequestEntityTooLarge)
    and etcd refuses objects over about 1.5 MiB (a 500 whose message says the request is
    too large); the embedded store applies ``_meta.MAX_OBJECT_BYTES`` itself. ``size`` is
    the object's JSON size in bytes when the backend knows it, ``limit`` the object limit.
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.size = size
        self.limit = limit
