"""A server's CPU per call split by layer, from a py-spy profile (``pip install py-spy``).

A sample is charged to the innermost frame that belongs to a known layer (so the standard
library's ``enum``, ``contextlib`` or ``socket`` frames count for the layer that called
them); samples of a thread waiting (epoll, trio's idle worker threads, asyncio's
selector) and stacks py-spy could not read are left out. Multiplying each layer's share
by the CPU time per call measured without the profiler gives microseconds per call by
layer, comparable across servers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# (label, substrings of a frame's file path); the first that matches names the layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # protovalidate's evaluation is native: its time shows in the Python frame calling it.
    ("request validation", ("/protovalidate/", "/actions/validation.py")),
    (
        "metrics and access log",
        ("/prometheus_client/", "/logging/", "/_extras/metrics.py", "/_extras/logs.py"),
    ),
    ("service: handler, store, fan-out", ("/actions/", "official_actions", "/orjson", "sqlite3")),
    ("HTTP server (hypercorn, connect_proto._server)", ("/hypercorn/", "/connect_proto/_server/")),
    ("RPC layer (connect_proto / connectrpc)", ("/connect_proto/", "/connectrpc/")),
    ("HTTP/2 (h2, hpack, hyperframe, priority)", ("/h2/", "/hpack/", "/hyperframe/", "/priority/")),
    ("event loop (trio / asyncio)", ("/trio/", "/asyncio/")),
    ("protobuf", ("/google/protobuf/",)),
]
OTHER = "other (stdlib)"

# Leaf frames of a thread that is waiting, not working (py-spy samples a thread blocked
# in C, such as a lock or a queue, at the Python line that called it).
_WAITING = (
    "epoll",
    "_thread_cache.py:211",  # trio's idle pool thread
    "WorkerThread._serve (actions/store/_thread.py",  # the store's thread, between calls
    "selectors.py",
    "threading.py",
)


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its threads until SIGINT (it writes ``out`` then)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # Blocking (the default): py-spy pauses the process per sample, so a stack is never
    # torn; the CPU per call it is multiplied with comes from rounds run without it.
    argv = [spy, "record", "--subprocesses", "--format", "raw", "-r", "250"]
    return subprocess.Popen(
        [*argv, "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = "/" + frame.rpartition("(")[2]  # py-spy shortens site-packages paths
        for label, keys in LAYERS:
            if any(key in path for key in keys):
                return label
    return OTHER


def shares(raw: Path) -> dict[str, float]:
    """Each layer's share of the working samples in a py-spy raw (collapsed) file."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith("process ") or any(mark in frames[-1] for mark in _WAITING):
            continue  # a stack py-spy could not read (only the process), or a wait
        label = layer_of(frames)
        counts[label] = counts.get(label, 0) + int(count)
    total = sum(counts.values())
    return {label: n / total for label, n in counts.items()} if total else {}
