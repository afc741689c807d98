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
