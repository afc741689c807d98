#!/usr/bin/env python
"""The service's real RPCs against the official connect-python server, in one run.

Three servers, each in its own process on 127.0.0.1:

- ``ours``: ``actions-service serve`` with its default store (embedded SQLite in a fresh
  data directory; a write is in the WAL before it is answered, so it survives kill -9) and
  default settings;
- ``official``: bench/official_actions.py, the same contract on the official
  ``connectrpc`` server (hypercorn's asyncio worker), requests checked with protovalidate
  as ours are, state in dicts, no durability;
- ``bare``: an ASGI app that answers at once, on stock hypercorn's trio worker: the
  ceiling of the transport ours runs on.

Measured, for ours and official with the same clients (ratios = ours / official):

1. Update: ``h2load`` (h2c, ``--conns`` x ``--streams``) sending one Connect
   ``UpdateRequest`` again and again (after the first, a no-op success, as an executor
   re-reporting a phase), ``--rounds`` interleaved rounds over the three servers, median
   requests/s and server CPU per request.
2. Enqueue: ``--parents`` roots, then ``--children`` task children each (grpcio, 32
   calls in flight): calls/s and server CPU per call.
3. WatchForUpdates: one stream per root (grpcio in a separate process, 100 streams per
   connection): time until every stream has its snapshot (root + children) and sentinel.
4. Fan-out (bench/watch_fanout.py's method): ``Update`` calls on the children at stepped
   rates, each watcher checks it got every state of its parent's children; p99 latency
   from the Update's return, and the highest rate whose p99 stays under ``--p99-ms``
   with nothing lost.
5. Idle streams: server RSS growth per stream with ``--idle-streams`` open, and what is
   left after they close.

    python bench/side_by_side.py                  # ~3 minutes
    python bench/side_by_side.py --quick          # ~1 minute: one rate, no idle phase
    python bench/side_by_side.py --json out.json

The client processes share the machine with the servers; figures are only comparable
within one run (the ratios), not across machines or busy periods.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub
from flyteidl2.common import phase_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _watch_client as wc
import watch_fanout as wf

ROOT = Path(__file__).resolve().parent.parent
UPDATE_PATH = "/flyteidl2.actions.ActionsService/Update"
TICKS = os.sysconf("SC_CLK_TCK")
HYPERCORN_TOML = 'keep_alive_max_requests = 10000000\ngraceful_timeout = 2.0\nerrorlog = "-"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_kib(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Proc:
    """A server process on a fixed port; ``metrics()`` as bench/watch_fanout.Server."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name, self.port = name, port
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not start:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        if self.name != "ours":
            return {"watch_streams": 0}  # no /metrics: nothing to check against
        return wf.Server.metrics(self)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start(name: str, workdir: Path, ours_python: str = sys.executable) -> Proc:
    port = free_port()
    toml = workdir / "hypercorn.toml"
    toml.write_text(HYPERCORN_TOML)
    hypercorn = [sys.executable, "-m", "hypercorn", "-c", str(toml), "-b", f"127.0.0.1:{port}"]
    if name == "ours":
        data = workdir / "data"
        argv = [
            sys.executable,
            "-m",
            "actions.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ]
    elif name == "official":
        argv = [*hypercorn, "-k", "asyncio", "bench.official_actions:app()"]
    else:
        argv = [*hypercorn, "-k", "trio", "bench.apps:bare"]
    return Proc(name, argv, port, workdir)


# --------------------------------------------------------------------------- Update


def update_body(path: Path) -> None:
    req = pb.UpdateRequest(
        action_id=wc.action_id("benchrun", "a0"),
        attempt=1,
        status={"phase": phase_pb2.ACTION_PHASE_RUNNING, "attempts": 1},
    )
    path.write_bytes(req.SerializeToString())


def h2load(target: str, body: Path, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [
            "h2load",
            "-n",
            str(args.requests),
            "-c",
            str(args.conns),
            "-m",
            str(args.streams),
            "-d",
            str(body),
            "-H",
            "content-type: application/proto",
            "-H",
            "connect-protocol-version: 1",
            f"http://{target}{UPDATE_PATH}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    ok = re.search(r"status codes: (\d+) 2xx", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)  # "935.62ms" under 1 s
    if not ok or not rate or int(ok.group(1)) != args.requests:
        raise RuntimeError(f"h2load against {target} failed:\n{out}")
    return float(rate.group(1))


async def enqueue_benchrun(target: str) -> None:
    async with grpc.aio.insecure_channel(target, options=wc.CHANNEL_OPTIONS) as channel:
        await ActionsServiceStub(channel).Enqueue(
            wf.task_request("benchrun", "a0", None), timeout=30
        )


def update_phase(servers: dict[str, Proc], workdir: Path, args: argparse.Namespace) -> dict:
    body = workdir / "update.bin"
    update_body(body)
    for name in ("ours", "official"):
        asyncio.run(enqueue_benchrun(servers[name].target))
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, server in servers.items():
            c0 = cpu_seconds(server.pid)
            rates[name].append(h2load(server.target, body, args))
            cpu[name].append((cpu_seconds(server.pid) - c0) / args.requests * 1e6)
    return {
        name: {
            "req_s": statistics.median(rates[name]),
            "rounds": rates[name],
            "cpu_us_per_req": statistics.median(cpu[name]),
        }
        for name in servers
    }


# --------------------------------------------------------------------------- streams


async def service_phase(server: Proc, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    channel = grpc.aio.insecure_channel(server.target, options=wc.CHANNEL_OPTIONS)
    stub = ActionsServiceStub(channel)
    watchers = wf.WatcherProcess()
    wf.cpu_seconds = cpu_seconds  # the whole process tree (hypercorn forks its workers)
    try:
        calls = args.parents * (args.children + 1)
        c0 = cpu_seconds(server.pid)
        seconds = await wf.setup_actions(stub, args.parents, args.children)
        out["enqueue_per_s"] = calls / seconds
        out["enqueue_cpu_us"] = (cpu_seconds(server.pid) - c0) / calls * 1e6
        print(f"  {server.name}: {calls} Enqueue in {seconds:.1f} s", file=sys.stderr)
        fan = argparse.Namespace(
            parents=args.parents,
            watchers=1,
            children=args.children,
            rates=args.rates,
            step_seconds=args.step_seconds,
            drain_seconds=5.0,
            streams_per_conn=100,
            profile=None,
            stop_above_ms=args.p99_ms,
            all_steps=False,
        )
        steps, info = await wf.latency_phase(server, watchers, stub, fan)  # type: ignore[arg-type]
        out["watch_open_s"] = info["open_seconds"]
        out["steps"] = [
            {
                "rate": s.rate,
                "achieved": s.achieved,
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
                "lost": s.lost,
                "server_cpu": s.server_cpu,
            }
            for s in steps
        ]
        passing = [
            s.rate
            for s in steps
            if s.p99_ms < args.p99_ms and s.lost == 0 and s.achieved >= 0.95 * s.rate
        ]
        out["best_rate"] = max(passing, default=0)
        if args.idle_streams:
            out.update(await idle_phase(server, stub, watchers, args))
    finally:
        watchers.stop()
        await channel.close()
    return out


async def idle_phase(
    server: Proc, stub: ActionsServiceStub, watchers: wf.WatcherProcess, args: argparse.Namespace
) -> dict[str, Any]:
    parents = [(f"idle{i}", "a0") for i in range(args.idle_streams)]
    await wf.bounded(
        [
            (lambda r=r: stub.Enqueue(wf.task_request(r, "a0", None), timeout=30))
            for r, _ in parents
        ],
        32,
    )
    await watchers.call("open", server.target, parents[:200], 1, 100)  # warm up, then close
    await watchers.call("close")
    await asyncio.sleep(1)
    before = rss_kib(server.pid)
    _, opened, seconds = await watchers.call("open", server.target, parents, 1, 100)
    await asyncio.sleep(1)
    during = rss_kib(server.pid)
    await watchers.call("close")
    await asyncio.sleep(2)
    after = rss_kib(server.pid)
    return {
        "idle_streams": opened,
        "idle_open_s": seconds,
        "kib_per_stream": (during - before) / max(1, opened),
        "kib_left_after_close": after - before,
    }


# --------------------------------------------------------------------------- report


def report(update: dict, results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    o, r = results["ours"], results["official"]
    rows: list[tuple[str, float, float, bool]] = [  # name, ours, official, lower is better
        (
            "unary Update, req/s (h2load)",
            update["ours"]["req_s"],
            update["official"]["req_s"],
            False,
        ),
        (
            "  server CPU per Update, us",
            update["ours"]["cpu_us_per_req"],
            update["official"]["cpu_us_per_req"],
            True,
        ),
        ("Enqueue, calls/s", o["enqueue_per_s"], r["enqueue_per_s"], False),
        ("  server CPU per Enqueue, us", o["enqueue_cpu_us"], r["enqueue_cpu_us"], True),
        (
            f"{args.parents:,} watch streams open+synced, s",
            o["watch_open_s"],
            r["watch_open_s"],
            True,
        ),
        (
            f"best Update rate, p99 < {args.p99_ms:g} ms, nothing lost",
            o["best_rate"],
            r["best_rate"],
            False,
        ),
    ]
    if args.idle_streams:
        rows.append(("KiB per idle watch stream", o["kib_per_stream"], r["kib_per_stream"], True))
        rows.append(
            (
                "KiB left after they closed",
                o["kib_left_after_close"],
                r["kib_left_after_close"],
                True,
            )
        )
    print(f"\n{'measure':52} {'ours':>10} {'official':>10} {'ours/off':>9}")
    for name, a, b, _lower in rows:
        ratio = a / b if b else float("nan")
        print(f"{name:52} {a:10.1f} {b:10.1f} {ratio:9.2f}")
    bare = update["bare"]["req_s"]
    print(
        f"bare hypercorn-trio ceiling: {bare:.0f} req/s; ours/ceiling "
        f"{update['ours']['req_s'] / bare:.2f}, official/ceiling "
        f"{update['official']['req_s'] / bare:.2f}"
    )
    for name in ("ours", "official"):
        steps = "  ".join(
            f"{s['rate']}/s: p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms lost {s['lost']} "
            f"cpu {s['server_cpu'] * 100:.0f}%"
            for s in results[name]["steps"]
        )
        print(f"fan-out {name}: {steps}")
    print(
        f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores: above ~1 the "
        "servers shared their core)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8000, help="h2load requests per round")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    ap.add_argument("--parents", type=int, default=1000)
    ap.add_argument("--children", type=int, default=5)
    ap.add_argument("--rates", default="200,500,1000,2000")
    ap.add_argument("--step-seconds", type=float, default=4.0)
    ap.add_argument("--p99-ms", type=float, default=20.0)
    ap.add_argument("--idle-streams", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="one round, one rate, no idle phase")
    ap.add_argument("--servers", default="ours,official", help="which to run phases 2-5 on")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--ours-python",
        default=sys.executable,
        help="the python whose actions-service runs as 'ours' (another checkout's venv: "
        "before/after comparisons)",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.rates, args.idle_streams = 1, "500", 0
    args.rates = [int(x) for x in args.rates.split(",")]
    if shutil.which("h2load") is None:
        sys.exit("h2load missing: apt-get install -y nghttp2-client")
    workdir = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    servers: dict[str, Proc] = {}
    try:
        for name in ("ours", "official", "bare"):
            servers[name] = start(name, workdir, args.ours_python)
        print("Update (h2load rounds) ...", file=sys.stderr)
        update = update_phase(servers, workdir, args)
        servers.pop("bare").stop()
        results: dict[str, dict[str, Any]] = {}
        for name in args.servers.split(","):
            print(f"{name}: Enqueue, watch streams, fan-out, idle streams ...", file=sys.stderr)
            results[name] = asyncio.run(service_phase(servers[name], args))
        report(update, results, args)
        if args.json:
            args.json.write_text(json.dumps({"update": update, "results": results}, indent=1))
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
