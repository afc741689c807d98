"""The public face: start/stop the emulator and reach its fault knobs.

with Emulator(crds=["k8s/crd.yaml"], namespaces=["flyte"]) as emu:
    client = emu.api_client()
    emu.faults.fail_next(2, 500, verbs=["GET"])
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import StatusError
from .faults import Faults
from .gc import GarbageCollector
from .resources import CRDS, NAMESPACES, Registry
from .server import Listener
from .store import ObjectStore


class Emulator:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        crds: Iterable[str | Path | dict[str, Any]] = (),
        namespaces: Iterable[str] = ("default",),
        history_size: int = 10_000,
        too_large_rv_wait: float = 3.0,
        bookmark_interval: float = 60.0,
        watch_timeout_range: tuple[float, float] = (1800.0, 3600.0),
        server_version: tuple[str, str] = ("1", "32"),
        request_log_size: int = 1000,
    ) -> None:
        self.host = host
        self.registry = Registry()
        self.store = ObjectStore(
            self.registry, history_size=history_size, too_large_rv_wait=too_large_rv_wait
        )
        self.faults = Faults()
        self.gc = GarbageCollector(self.store, self.faults)
        self.bookmark_interval = bookmark_interval
        self.watch_timeout_range = watch_timeout_range
        self.server_version = server_version
        self.stopping = threading.Event()
        self.watchers_started = 0
        # [method, path-with-query, status, seconds]; appended when a request arrives and
        # completed when it ends, so open watches show up too.
        self.requests: collections.deque[list[Any]] = collections.deque(maxlen=request_log_size)
        self._listener = Listener(self, host, port)
        self._refuse_timer: threading.Timer | None = None
        self._started = False
        for crd in crds:
            self.apply_crds(crd)
        for ns in namespaces:
            self.ensure_namespace(ns)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> str:
        """Start listening and the garbage collector; returns the base URL."""
        if not self._started:
            self._listener.start()
            self.gc.start()
            self._started = True
        return self.url

    def stop(self) -> None:
        """Stop everything this emulator started: listener, connections, watches, GC."""
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
            self._refuse_timer.join(5)
            self._refuse_timer = None
        self.stopping.set()
        self.store.close()
        self._listener.stop()
        self.gc.stop()
        self._started = False

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- set-up helpers ----------------------------------------------------------------

    def apply_crds(self, source: str | Path | dict[str, Any]) -> list[dict[str, Any]]:
        """Create (or replace) every CustomResourceDefinition in a YAML file or dict."""
        docs = [source] if isinstance(source, dict) else _load_yaml(Path(source))
        out = []
        for doc in docs:
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            existing = self.store.lookup(CRDS, None, name)
            if existing is None:
                out.append(self.store.create(CRDS, None, doc))
            else:
                body = dict(doc, metadata=dict(doc["metadata"]))
                body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                out.append(self.store.update(CRDS, None, name, body))
        return out

    def ensure_namespace(
        self, name: str, *, annotations: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Create namespace ``name`` unless it exists; returns the stored object."""
        metadata: dict[str, Any] = {"name": name}
        if annotations:
            metadata["annotations"] = dict(annotations)
        try:
            return self.store.create(NAMESPACES, None, {"metadata": metadata})
        except StatusError as err:
            if err.reason != "AlreadyExists":
                raise
            return self.store.get(NAMESPACES, None, name)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig for kubectl and ``kubernetes.config.load_kube_config``; its current
        context points at this emulator with ``namespace``. Written whole (a reader never
        sees half a file), owner-only as kubeconfigs usually are."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(yaml.safe_dump(config, sort_keys=False))
        os.replace(partial, path)
        return path

    def api_client(self, **config: Any) -> Any:
        """A ``kubernetes.client.ApiClient`` for this emulator (imports kubernetes lazily)."""
        import kubernetes

        cfg = kubernetes.client.Configuration()
        cfg.host = self.url
        for key, value in config.items():
            setattr(cfg, key, value)
        return kubernetes.client.ApiClient(cfg)

    # --- fault knobs that need more than Faults ----------------------------------------

    def compact(self) -> int:
        """Drop all watch history now; returns the RV below which requests answer 410."""
        return self.store.compact()

    def send_bookmarks(self) -> None:
        """Every open watch with allowWatchBookmarks=true sends a BOOKMARK now."""
        with self.faults.lock:
            self.faults.bookmark_generation += 1
        self.store.kick()

    def close_watches(self, *, abrupt: bool = False) -> None:
        """End every open watch stream: cleanly, or without the final chunk."""
        with self.faults.lock:
            self.faults.close_generation += 1
            self.faults.close_abrupt = abrupt
        self.store.kick()

    def refuse_connections(self) -> None:
        """Stop listening and drop every open connection (the apiserver went away)."""
        self._listener.stop()

    def accept_connections(self) -> None:
        """Listen again on the same port."""
        if not self.stopping.is_set():
            self._listener.start()

    def refuse_connections_later(self, seconds: float) -> None:
        """For the admin endpoint: refuse shortly after replying, come back after ``seconds``."""

        def cycle() -> None:
            time.sleep(0.05)  # let the admin reply reach the client first
            self.refuse_connections()
            if not self.stopping.wait(seconds):
                self.accept_connections()

        self._refuse_timer = threading.Timer(0, cycle)
        self._refuse_timer.daemon = True
        self._refuse_timer.start()

    @property
    def listening(self) -> bool:
        return self._listener.listening

    def wait_gc_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the GC has caught up with every write (cascades may continue after)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rv = self.store.rv
            if self.gc.idle.wait(0.05) and self.gc._cursor == rv == self.store.rv:
                return True
        return False

    # --- introspection -------------------------------------------------------------------

    def log_request(self, method: str, path: str) -> list[Any]:
        record: list[Any] = [method, path, 0, 0.0]
        self.requests.append(record)
        return record

    def describe(self) -> dict[str, Any]:
        return {
            "resourceVersion": str(self.store.rv),
            "compactedResourceVersion": str(self.store.compacted_rv),
            "objects": self.store.object_count(),
            "connections": self._listener.connection_count(),
            "watchersStarted": self.watchers_started,
            "listening": self.listening,
        }


Core = Emulator


def _load_yaml(path: Path) -> list[dict[str, Any]]:
    # Parsing the CRD costs ~40 ms; tests start an emulator per test, so parse once per
    # file version. Callers never mutate the documents (the store deep-copies on create).
    stat = path.stat()
    return _parse_yaml(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _parse_yaml(path: str, _mtime_ns: int, _size: int) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
