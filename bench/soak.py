"""Soak: mixed load with misbehaving clients against a real ``actions-service`` process,
then a check that everything the clients made the server hold is given back.

    python bench/soak.py --seconds 60            # figures as text, exit 1 on a leak
    python bench/soak.py --seconds 60 --json

The server runs ``serve --memory`` with a short write timeout (``--write-timeout``, 2 s),
so that stalled clients are abandoned within the run. Client threads, each looping until
the time is up (every loop bounded by it, every socket wait by a timeout):

- ``good``: Enqueue then Update children of its own root over gRPC, reading every
  answer, over a bounded set of 200 children; a new connection every 50 calls.
- ``watcher``: WatchForUpdates on a busy parent, reads the snapshot and a few updates,
  then cancels the stream (RST_STREAM) or drops the connection, and reconnects.
- ``leaver``: window 0, 40 unary calls and 4 watches, then closes the socket (FIN). The
  unary calls store nothing new, so RSS growth is the server's own.
- ``resetter``: the same, then resets the connection (RST).
- ``staller``: the same, then keeps the socket open, reading nothing, for twice the write
  timeout, and closes it.

Before the load (after a warm-up) and after it (once the last client has gone, waiting up
to the write timeout plus 15 s) the script reads, from ``/metrics`` and ``/proc``: calls in
flight, open server streams, watch subscriptions, trio tasks, file descriptors and RSS.
Counts must come back to the baseline exactly (a leak fails the run); RSS is reported, and
fails the run only past ``--rss-slack`` MiB over the baseline (the allocator keeps freed
arenas, so RSS is not expected to return to the byte).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "tests" / "support", ROOT / "tests" / "support" / "gen"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from actions_harness import aid, task_req, update_req  # noqa: E402
from flyteidl2.actions import actions_service_pb2 as pb  # noqa: E402
from flyteidl2.common import phase_pb2  # noqa: E402
from raw_h2 import (  # noqa: E402
    CONNECT_PROTO,
    RawH2,
    ServiceProcess,
    metric_sum,
    open_fds,
    rss_kib,
    scrape,
)

SVC = "/flyteidl2.actions.ActionsService/"
BUSY_PARENT = "busy"
GOOD_CHILDREN = 200  # per good client
# hypercorn keeps a connection that its client closed while idle (its fd and tasks) until
# the keep-alive timeout; short here, so that the run can see it go.
KEEP_ALIVE_TIMEOUT = 3.0

GAUGES = {
    "open_calls": "actions_open_calls",
    "open_streams": "rpc_server_open_streams",
    "subscribers": "actions_watch_subscribers",
    "trio_tasks": "actions_trio_tasks",
}


def measure(server: ServiceProcess) -> dict[str, float]:
    text = scrape(server.port)
    figures = {name: metric_sum(text, metric) for name, metric in GAUGES.items()}
    figures["fds"] = open_fds(server.pid)
    figures["rss_mib"] = round(rss_kib(server.pid) / 1024, 1)
    return figures


class Load:
    """The client threads and what they did."""

    def __init__(self, port: int, seconds: float, write_timeout: float) -> None:
        self.port = port
        self.until = time.monotonic() + seconds
        self.write_timeout = write_timeout
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._names = itertools.count()

    def running(self) -> bool:
        return time.monotonic() < self.until

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def _loop(self, kind: str, body: Callable[[], None]) -> None:
        while self.running():
            try:
                body()
            except (OSError, ValueError, KeyError) as exc:  # the server may drop abusers
                with self._lock:
                    self.errors[f"{kind}: {type(exc).__name__}"] += 1
                time.sleep(0.05)

    def good(self, worker: int) -> None:
        root = f"g{worker}"
        first = RawH2(self.port)
        sid = first.call(SVC + "Enqueue", task_req(aid(root)).SerializeToString())
        first.responses(10, [sid])
        first.close()

        def body() -> None:
            client = RawH2(self.port, timeout=10)
            try:
                for _ in range(25):
                    if not self.running():
                        break
                    # A bounded set of children (Enqueue again is ALREADY_EXISTS), so
                    # that the store stops growing and RSS measures the server itself.
                    child = aid(f"c{worker}-{next(self._names) % GOOD_CHILDREN}")
                    sids = [
                        client.call(
                            SVC + "Enqueue", task_req(child, parent=root).SerializeToString()
                        )
                    ]
                    client.responses(10, sids)
                    update = update_req(child, phase_pb2.ACTION_PHASE_RUNNING)
                    sid = client.call(SVC + "Update", update.SerializeToString())
                    statuses = client.responses(10, [sid])
                    ok = statuses.get(sid, {}).get(b"grpc-status") == b"0"
                    self.count("good calls" if ok else "good calls failed", 2)
            finally:
                client.close()

        self._loop("good", body)

    def busy_writer(self) -> None:
        """Keeps the busy parent's watchers fed with updates."""
        client = RawH2(self.port)
        sid = client.call(SVC + "Enqueue", task_req(aid(BUSY_PARENT)).SerializeToString())
        client.responses(10, [sid])
        children = [aid(f"b{n}") for n in range(5)]
        for child in children:
            request = task_req(child, parent=BUSY_PARENT).SerializeToString()
            client.responses(10, [client.call(SVC + "Enqueue", request)])
        client.close()

        def body() -> None:
            writer = RawH2(self.port, timeout=10)
            try:
                for attempt in range(1, 50):
                    if not self.running():
                        break
                    for child in children:
                        update = update_req(child, phase_pb2.ACTION_PHASE_RUNNING, attempt)
                        sid = writer.call(SVC + "Update", update.SerializeToString())
                        writer.responses(10, [sid])
                        self.count("busy updates")
                    time.sleep(0.05)
            finally:
                writer.close()

        self._loop("busy", body)

    def watcher(self, index: int) -> None:
        request = pb.WatchForUpdatesRequest(parent_action_id=aid(BUSY_PARENT)).SerializeToString()
        rounds = itertools.count()

        def body() -> None:
            client = RawH2(self.port, timeout=10)
            try:
                sid = client.call(SVC + "WatchForUpdates", request)
                client.responses(0.3)  # the snapshot and a few updates
                self.count("watches")
                if next(rounds) % 2:
                    client.cancel(sid)
                    client.responses(0.1)
            finally:
                client.close()

        self._loop("watcher", body)

    def _abuse(self, finish: Callable[[RawH2], None]) -> None:
        """40 unary calls whose answers carry a body (so a window of 0 holds them): a
        Connect Enqueue of an action that exists (ALREADY_EXISTS, in the body) and a
        gRPC Update that succeeds (its message is DATA); then 4 watches."""
        client = RawH2(self.port, window=0, timeout=10)
        try:
            again = task_req(aid(BUSY_PARENT)).SerializeToString()
            update = update_req(aid("b0"), phase_pb2.ACTION_PHASE_RUNNING).SerializeToString()
            watch = pb.WatchForUpdatesRequest(parent_action_id=aid(BUSY_PARENT))
            for n in range(40):
                if n % 2:
                    client.call(SVC + "Enqueue", again, content_type=CONNECT_PROTO)
                else:
                    client.call(SVC + "Update", update)
            for _ in range(4):
                client.call(SVC + "WatchForUpdates", watch.SerializeToString())
            client.flush()
            self.count("abusive calls", 44)
            client.responses(0.2)
        finally:
            finish(client)
        time.sleep(0.2)  # a mix, not a flood: the good clients' calls still get through

    def leaver(self) -> None:
        self._loop("leaver", lambda: self._abuse(RawH2.close))

    def resetter(self) -> None:
        self._loop("resetter", lambda: self._abuse(RawH2.reset))

    def staller(self) -> None:
        def hold(client: RawH2) -> None:
            end = min(self.until, time.monotonic() + 2 * self.write_timeout)
            while time.monotonic() < end:
                time.sleep(0.1)
            client.close()

        self._loop("staller", lambda: self._abuse(hold))

    def run(self, kinds: frozenset[str]) -> None:
        everyone = [
            ("good", self.good, (0,)),
            ("good", self.good, (1,)),
            ("watcher", self.busy_writer, ()),
            ("watcher", self.watcher, (0,)),
            ("watcher", self.watcher, (1,)),
            ("leaver", self.leaver, ()),
            ("resetter", self.resetter, ()),
            ("staller", self.staller, ()),
        ]
        threads = [
            threading.Thread(target=target, args=args, name=kind)
            for kind, target, args in everyone
            if kind in kinds
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


CLIENT_KINDS = frozenset({"good", "watcher", "leaver", "resetter", "staller"})


def settle(server: ServiceProcess, baseline: dict[str, float], seconds: float) -> dict[str, float]:
    """Measure until every count is back at the baseline, or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        figures = measure(server)
        back = all(figures[k] <= baseline[k] for k in (*GAUGES, "fds"))
        if back or time.monotonic() >= deadline:
            return figures
        time.sleep(0.5)


def soak(
    seconds: float,
    write_timeout: float,
    rss_slack: float,
    log: Path,
    kinds: frozenset[str] = CLIENT_KINDS,
) -> dict[str, object]:
    env = {
        "ACTIONS_SERVER_WRITE_TIMEOUT": str(write_timeout),
        "ACTIONS_SERVER_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE_TIMEOUT),
        "ACTIONS_LOG_ACCESS_LOG": "false",
    }
    with ServiceProcess(log, env) as server:
        warm = Load(server.port, 1.0, write_timeout)
        warm.good(9)  # imports, caches and the store's first writes before the baseline
        time.sleep(1)
        baseline = measure(server)
        load = Load(server.port, seconds, write_timeout)
        started = time.monotonic()
        load.run(kinds)
        during = time.monotonic() - started
        after = settle(server, baseline, write_timeout + KEEP_ALIVE_TIMEOUT + 15)
        leaks = {k: (baseline[k], after[k]) for k in (*GAUGES, "fds") if after[k] > baseline[k]}
        rss_growth = round(after["rss_mib"] - baseline["rss_mib"], 1)
        return {
            "seconds": round(during, 1),
            "write_timeout": write_timeout,
            "baseline": baseline,
            "after": after,
            "rss_growth_mib": rss_growth,
            "leaks": leaks,
            "rss_over_slack": rss_growth > rss_slack,
            "alive": server.alive(),
            "clients": dict(load.counts),
            "client_errors": dict(load.errors),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration")
    parser.add_argument("--write-timeout", type=float, default=2.0)
    parser.add_argument("--rss-slack", type=float, default=64.0, help="MiB over the baseline")
    parser.add_argument("--log", type=Path, help="server log (default: a temp file)")
    parser.add_argument(
        "--clients",
        default=",".join(sorted(CLIENT_KINDS)),
        help="comma-separated kinds of client to run (default: all)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    log = args.log or Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    kinds = frozenset(args.clients.split(","))
    if not kinds <= CLIENT_KINDS:
        parser.error(f"--clients: unknown kinds {sorted(kinds - CLIENT_KINDS)}")
    result = soak(args.seconds, args.write_timeout, args.rss_slack, log, kinds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"soak: {result['seconds']} s of load, write timeout {args.write_timeout} s")
        print(f"clients: {result['clients']}")
        print(f"client errors: {result['client_errors']}")
        base, after = result["baseline"], result["after"]
        assert isinstance(base, dict) and isinstance(after, dict)
        for key in base:
            print(f"  {key:13} baseline {base[key]:>8}  after {after[key]:>8}")
        print(f"leaks: {result['leaks'] or 'none'}; RSS growth {result['rss_growth_mib']} MiB")
        print(f"server log: {log}")
    failed = bool(result["leaks"]) or bool(result["rss_over_slack"]) or not result["alive"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
