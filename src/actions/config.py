"""Configuration: the Flyte deployment's keys, from defaults, a YAML file, then flags.

YAML shape (every key optional)::

    actions:
      kubernetes:
        namespace: flyte
      watchWorkers: 10
      watchBufferSize: 100
      watchSubscriberBufferSize: 1000   # per stream; not a Flyte key
      dataDir: ~/.local/share/actions-service
      server:
        host: 127.0.0.1
        port: 8091
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "actions-service"


@dataclass(frozen=True)
class Config:
    namespace: str = "flyte"  # actions.kubernetes.namespace
    watch_workers: int = 10  # actions.watchWorkers
    watch_buffer_size: int = 100  # actions.watchBufferSize
    subscriber_buffer_size: int = 1000  # actions.watchSubscriberBufferSize
    host: str = "127.0.0.1"  # actions.server.host
    port: int = 8091  # actions.server.port
    data_dir: Path | None = None  # actions.dataDir; None = default_data_dir()

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or default_data_dir()).expanduser()

    def validate(self) -> Config:
        if self.watch_workers < 1:
            raise ValueError("actions.watchWorkers must be at least 1")
        if self.watch_buffer_size < 1:
            raise ValueError("actions.watchBufferSize must be at least 1")
        if self.subscriber_buffer_size < 1:
            raise ValueError("actions.watchSubscriberBufferSize must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("actions.server.port must be between 0 and 65535")
        return self


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_KEYS: dict[str, tuple[str, type]] = {
    "actions.kubernetes.namespace": ("namespace", str),
    "actions.watchWorkers": ("watch_workers", int),
    "actions.watchBufferSize": ("watch_buffer_size", int),
    "actions.watchSubscriberBufferSize": ("subscriber_buffer_size", int),
    "actions.server.host": ("host", str),
    "actions.server.port": ("port", int),
    "actions.dataDir": ("data_dir", Path),
}


def from_mapping(tree: dict[str, Any], base: Config | None = None) -> Config:
    """Apply the keys present in a parsed YAML tree to ``base`` (defaults when None)."""
    changes: dict[str, Any] = {}
    for key, (attr, kind) in _KEYS.items():
        value = _get(tree, key)
        if value is None:
            continue
        try:
            changes[attr] = kind(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from exc
    return replace(base or Config(), **changes).validate()


def load(path: Path | None, base: Config | None = None) -> Config:
    if path is None:
        return (base or Config()).validate()
    with open(path, encoding="utf-8") as fh:
        tree = yaml.safe_load(fh) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_mapping(tree, base)
