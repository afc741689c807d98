"""Kubernetes' rules for names, label keys and label values, written once.

From the Kubernetes API conventions ("Object Names and IDs", "Labels and Selectors"). Every
check uses ``fullmatch``: a ``$`` anchor would accept a trailing newline.
"""

from __future__ import annotations

import re
from typing import Final

MAX_LABEL: Final = 63
MAX_SUBDOMAIN: Final = 253

_DNS_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE: Final = re.compile(_DNS_LABEL)
_DNS_SUBDOMAIN_RE: Final = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME_PART_RE: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE_RE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_dns_label(value: str) -> bool:
    """A DNS-1123 label: at most 63 of ``a-z 0-9 -``, alphanumeric at both ends."""
    return len(value) <= MAX_LABEL and _DNS_LABEL_RE.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    """A DNS-1123 subdomain: dot-separated labels, at most 253 characters."""
    return len(value) <= MAX_SUBDOMAIN and _DNS_SUBDOMAIN_RE.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    """A label value: empty, or at most 63 of ``A-Z a-z 0-9 - _ .``, alphanumeric at both
    ends."""
    return len(value) <= MAX_LABEL and _LABEL_VALUE_RE.fullmatch(value) is not None


def is_qualified_name_part(value: str) -> bool:
    """The name part of a label or annotation key (after an optional ``prefix/``)."""
    return 0 < len(value) <= MAX_LABEL and _NAME_PART_RE.fullmatch(value) is not None
