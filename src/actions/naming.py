"""Deterministic names for TaskAction objects: object names, label values, hashes, shards.

Everything here is a pure function of its arguments, so the service, the fan-out and any
later reader (an executor, ``kubectl``) derive the same names from the same identifier.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Final

from flyteidl2.common.identifier_pb2 import ActionIdentifier, RunIdentifier

from actions.kube_names import MAX_LABEL, is_label_value

GROUP: Final = "flyte.org"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TaskAction"
# Traces: a kind of their own (k8s/trace-crd.yaml), never a TaskAction.
TRACE_KIND: Final = "TraceAction"
TRACE_PLURAL: Final = "actiontraces"

LABEL_ORG: Final = "flyte.org/org"
LABEL_PROJECT: Final = "flyte.org/project"
LABEL_DOMAIN: Final = "flyte.org/domain"
LABEL_RUN: Final = "flyte.org/run"
LABEL_ACTION: Final = "flyte.org/action"
LABEL_ACTION_TYPE: Final = "flyte.org/action-type"
LABEL_IS_ROOT: Final = "flyte.org/is-root"
LABEL_PARENT: Final = "flyte.org/parent"

# The service's own labels and annotations share this prefix; a child never inherits them
# from its parent (it sets its own).
SERVICE_KEY_PREFIX: Final = "flyte.org/"
ANNOTATION_ORG: Final = "flyte.org/org"
ANNOTATION_SUBJECT: Final = "flyte.org/subject"
ANNOTATION_QUEUE: Final = "flyte.org/queue"
ANNOTATION_RUN_START_TIME: Final = "flyte.org/run-start-time"
ANNOTATION_ABORT_REASON: Final = "flyte.org/abort-reason"
ANNOTATION_ABORTED_BY: Final = "flyte.org/aborted-by"

HASH_LEN: Final = 10
NAME_HASH_LEN: Final = 12
# Room for the executor's "-<retry>" pod-name suffix within a 63-character DNS label.
MAX_OBJECT_NAME: Final = 52

# An encoded part ends in "-" plus HASH_LEN hex digits. A valid part of that same shape is
# encoded too, so an encoded part can never equal a passed-through one: this keeps the
# mapping from identifiers to names injective (up to a collision of the hash itself).
_LOOKS_ENCODED = re.compile(rf"-[0-9a-f]{{{HASH_LEN}}}$")
_INVALID_RUN = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")

_FNV_OFFSET: Final = 0x811C9DC5
_FNV_PRIME: Final = 0x01000193
_SHARD_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_SHARD_PAIRS: Final = tuple(a + b for a in _SHARD_CHARS for b in _SHARD_CHARS)


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits (Go's hash/fnv New32a)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def short_hash(value: str) -> str:
    """A short, stable, lowercase-hex digest of ``value``."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:HASH_LEN]


def _encode(value: str, max_len: int) -> str:
    """``value`` lowered and cleaned, cut to fit, suffixed with a hash of the original."""
    cleaned = _DASHES.sub("-", _INVALID_RUN.sub("-", value.lower())).strip("-")
    cleaned = cleaned[: max_len - HASH_LEN - 1].rstrip("-")
    # "x" keeps the "-<hash>" ending even when nothing printable is left.
    return f"{cleaned or 'x'}-{short_hash(value)}"


def label_value(value: str) -> str:
    """A label value for ``value``: itself when valid, otherwise encoded the same way."""
    if is_label_value(value) and not _LOOKS_ENCODED.search(value):
        return value
    return _encode(value, MAX_LABEL)


# An action's name is asked for on every Update and Signal of its life: worth keeping.
@functools.lru_cache(maxsize=65_536)
def object_name_for(org: str, project: str, domain: str, run: str, action: str) -> str:
    """``<run>-<action>-<hash>``: a DNS-1123 label that starts with a letter and has at most
    ``MAX_OBJECT_NAME`` characters, unique for the whole identifier.

    Flyte's executor names an action's pods ``<object name>-<retry>`` and some of its
    plugins name Services after them (DNS-1035 labels, at most 63 characters), so the name
    leaves room for that suffix. The readable part is the run and action names, cleaned
    and cut to fit; the hash covers all five parts, so runs of the same name in other
    projects, domains or orgs never collide (up to a collision of the hash itself)."""
    identity = json.dumps([org, project, domain, run, action], ensure_ascii=False)
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:NAME_HASH_LEN]
    readable = _DASHES.sub("-", _INVALID_RUN.sub("-", f"{run}-{action}".lower())).strip("-")
    if not readable[:1].isalpha():
        readable = f"x{readable}"
    readable = readable[: MAX_OBJECT_NAME - NAME_HASH_LEN - 1].rstrip("-")
    return f"{readable}-{digest}"


def object_name(action_id: ActionIdentifier) -> str:
    run = action_id.run
    return object_name_for(run.org, run.project, run.domain, run.name, action_id.name)


def parent_object_name(run: RunIdentifier, parent_action_name: str) -> str:
    return object_name_for(run.org, run.project, run.domain, run.name, parent_action_name)


def run_labels(run: RunIdentifier) -> dict[str, str]:
    labels = {
        LABEL_PROJECT: label_value(run.project),
        LABEL_DOMAIN: label_value(run.domain),
        LABEL_RUN: label_value(run.name),
    }
    if run.org:
        labels[LABEL_ORG] = label_value(run.org)
    return labels


def action_labels(
    action_id: ActionIdentifier, action_type: str, parent: str | None
) -> dict[str, str]:
    labels = run_labels(action_id.run)
    labels[LABEL_ACTION] = label_value(action_id.name)
    labels[LABEL_ACTION_TYPE] = action_type
    labels[LABEL_IS_ROOT] = "false" if parent else "true"
    if parent:
        labels[LABEL_PARENT] = label_value(parent)
    return labels


def children_selector(parent_id: ActionIdentifier) -> dict[str, str]:
    """The label selector that lists exactly the direct children of ``parent_id`` (modulo
    label-value hash collisions, which readers filter out by spec)."""
    labels = run_labels(parent_id.run)
    labels[LABEL_PARENT] = label_value(parent_id.name)
    return labels


def output_shard(namespace: str, name: str) -> str:
    """Two base-36 characters: pair number FNV-1a-32(``namespace/name``) mod 1296."""
    return _SHARD_PAIRS[fnv1a_32(f"{namespace}/{name}".encode()) % len(_SHARD_PAIRS)]


def output_uri(namespace: str, name: str, run_output_base: str, action: str, attempt: int) -> str:
    """``<scheme>://<bucket>/<shard>/<rest of runOutputBase>/<action>/<attempt>``; empty when
    ``run_output_base`` is empty."""
    if not run_output_base:
        return ""
    scheme, sep, rest = run_output_base.partition("://")
    if not sep:
        scheme, rest = "", run_output_base
    bucket, _, path = rest.partition("/")
    segments = [output_shard(namespace, name)]
    path = path.strip("/")
    if path:
        segments.append(path)
    segments.extend((action, str(attempt if attempt > 0 else 1)))
    prefix = f"{scheme}://{bucket}" if sep else bucket
    return f"{prefix}/{'/'.join(segments)}"
