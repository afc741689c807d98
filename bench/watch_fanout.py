#!/usr/bin/env python
"""Watch fan-out benchmark: end-to-end update latency and memory per idle stream.

One run reports, side by side:

1. **Memory per idle stream**: server RSS growth / streams with ``--idle-streams``
   (10,000) WatchForUpdates streams open and idle: one stream per (childless) parent,
   each has read its snapshot and sentinel, nothing changes. Checked against
   ``/metrics`` (``actions_watch_subscribers``, or ``watch_streams`` of the older JSON
   form), which must drop back to 0 when the streams close.
2. **Latency under a steady update rate**: ``--parents`` (100) root actions, each with
   ``--children`` (10) child actions and ``--watchers`` (10) streams watching it, so 1,000
   streams and every Update reaches 10 of them (the fan-out ratio). After a warm-up
   (one update per child, not reported) the updater sends ``Update`` calls round-robin
   over the children at a fixed rate (open loop, paced, at most one call in flight per
   action, at most 256 in all), stepping the rate (50, 100, 250, 500, 1000, 2000 /s,
   ``--step-seconds`` each; later steps are skipped once a step's p99 passes
   ``--stop-above-ms``). Each Update carries a per-action sequence number as its
   attempt number, which every watcher gets back as the last segment of
   ``ActionUpdate.output_uri``. Latency = watcher receipt - the moment that ``Update``
   call returned to the updater (both ``time.monotonic_ns()``: CLOCK_MONOTONIC, one
   clock for all processes on Linux); it can be negative, since the fan-out may
   deliver before the Update response reaches the caller. ``server CPU ms/update`` is
   the server's CPU time (all threads) per Update in the step, fan-out included: the
   figure that least depends on what else the machine is running.

Processes: the server (``actions-service serve --memory --port 0``), one watcher process
(bench/_watch_client.py: grpcio's asyncio API with the flyteidl2 stubs, streams
multiplexed ``--streams-per-conn`` (100) to an h2c connection) and this one
(orchestrator and updater, grpcio asyncio). Everything binds 127.0.0.1 and is stopped
at the end. Each (stream, action, sequence) that should arrive is checked:
``delivered`` arrived as sent; ``coalesced`` did not, but a newer state of the same
action reached that stream (the fan-out merges updates of one action that queue up
behind a slow stream, by design); ``lost`` neither, within ``--drain-seconds`` after
the step. Exit status 1 when anything was lost, a stream failed or an Update failed.

    python bench/watch_fanout.py                 # quick: ~2 minutes
    python bench/watch_fanout.py --long          # more rates, 15 s per step
    python bench/watch_fanout.py --rates 500,1000 --step-seconds 3 --idle-streams 0
    python bench/watch_fanout.py --profile DIR   # py-spy the server per step
    python bench/watch_fanout.py --server-script patched.py   # A/B a patched server

Aims (from the issue): p99 < 20 ms at 1,000 updates/s; < 30 KiB per idle stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub
from flyteidl2.common import phase_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _watch_client as wc

ROOT = Path(__file__).resolve().parent.parent
LATENCY_LIMIT_MS = 50.0  # a step "holds" when its p99 stays under this
AIM_P99_MS, AIM_RATE, AIM_KIB = 20.0, 1000, 30.0
TICKS = os.sysconf("SC_CLK_TCK")
QUICK_RATES = [50, 100, 250, 500, 1000, 2000]
LONG_RATES = [50, 100, 250, 500, 750, 1000, 1500, 2000, 3000]


# --------------------------------------------------------------------------- processes


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    """``actions-service serve --memory --port 0`` in a subprocess; the port from its log."""

    def __init__(self, workdir: Path, script: Path | None = None) -> None:
        self.log = workdir / "server.log"
        entry = [str(script)] if script else ["-m", "actions.cli"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *entry, "serve", "--memory", "--port", "0"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """``/metrics``: Prometheus text (series name with labels -> value) or the older
        JSON counters; either way ``watch_streams`` is the number of open streams."""
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=10) as response:
            text = response.read().decode()
        if text.lstrip().startswith("{"):
            return json.loads(text)
        series: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                series[name] = float(value)
        series["watch_streams"] = series.get("actions_watch_subscribers", -1)
        return series

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class WatcherProcess:
    """bench/_watch_client.py in a process of its own, driven over a pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=wc.run, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    async def call(self, *command: Any, wait: float = 600) -> tuple[Any, ...]:
        self.conn.send(command)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.conn.poll, wait):
            raise RuntimeError(f"watcher process did not answer {command[0]!r}")
        reply = self.conn.recv()
        if reply[0] == "error":
            raise RuntimeError(f"watcher process: {reply[1]}")
        return reply

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("exit",))
            except OSError:
                pass
            self.proc.join(20)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class Profiler:
    """py-spy on the server for one step (``--profile DIR``)."""

    def __init__(self, pid: int, out: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid),
                "--duration", str(max(1, int(seconds))), "--rate", "200",
                "--format", "speedscope", "--output", str(out), "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait(self) -> None:
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- workload


def parent_id(p: int) -> tuple[str, str]:
    return f"r{p}", "a0"


def child_name(g: int) -> str:
    return f"c{g}"


def task_request(run: str, name: str, parent: str | None) -> pb.EnqueueRequest:
    action = pb.Action(
        action_id=wc.action_id(run, name),
        input_uri="s3://bench/in",
        run_output_base=f"s3://bench/o/{run}",
        task={
            "spec": {"task_template": {"type": "python-task", "id": {"name": "m.f"}}},
        },
    )
    if parent is not None:
        action.parent_action_name = parent
    return pb.EnqueueRequest(action=action)


async def bounded(calls: list[Any], limit: int) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(call: Any) -> None:
        async with sem:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


async def setup_actions(
    stub: ActionsServiceStub, parents: int, children: int, first: int = 0
) -> float:
    """Enqueue the roots ``first`` to ``first + parents - 1``, then their children (child
    g belongs to parent g // children)."""
    t0 = time.monotonic()
    await bounded(
        [
            (lambda p=p: stub.Enqueue(task_request(*parent_id(p), None), timeout=30))
            for p in range(first, first + parents)
        ],
        32,
    )
    await bounded(
        [
            (
                lambda g=g: stub.Enqueue(
                    task_request(parent_id(g // children)[0], child_name(g), "a0"), timeout=30
                )
            )
            for g in range(first * children, (first + parents) * children)
        ],
        32,
    )
    return time.monotonic() - t0


@dataclass
class Step:
    rate: int
    seconds: float
    updates: int = 0
    achieved: float = 0.0
    update_errors: int = 0
    update_p50_ms: float = float("nan")
    expected: int = 0
    delivered: int = 0
    coalesced: int = 0
    lost: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    min_ms: float = float("nan")
    server_lag_p50_ms: float = float("nan")  # bucket bounds of the server's histogram
    server_lag_p99_ms: float = float("nan")
    server_cpu: float = 0.0  # share of one core
    watcher_cpu: float = 0.0
    updater_cpu: float = 0.0
    drain_s: float = 0.0
    stream_failures: list[str] = field(default_factory=list)


class Updater:
    def __init__(self, stub: ActionsServiceStub, parents: int, children: int) -> None:
        self.stub = stub
        self.children = children
        # Interleaved so that consecutive updates go to different parents.
        self.order = [p * children + c for c in range(children) for p in range(parents)]
        self.seq = [1] * (parents * children)  # the next attempt number per child
        self.locks = [asyncio.Lock() for _ in range(parents * children)]
        self.cursor = 0

    async def warm_up(self) -> None:
        await self.run(1e9, 0, limit=16, count=len(self.order))

    async def run(
        self, rate: float, seconds: float, limit: int = 256, count: int | None = None
    ) -> tuple[list[tuple[int, int, int, int]], int]:
        """Send ``rate * seconds`` (or ``count``) updates paced at ``rate``; return
        ``(child, seq, t_sent_ns, t_returned_ns)`` per successful update and the error
        count."""
        done: list[tuple[int, int, int, int]] = []
        errors = 0
        sem = asyncio.Semaphore(limit)
        tasks: set[asyncio.Task[None]] = set()
        clock = time.monotonic_ns

        async def one(g: int) -> None:
            nonlocal errors
            try:
                async with self.locks[g]:
                    seq = self.seq[g]
                    self.seq[g] = seq + 1
                    request = pb.UpdateRequest(
                        action_id=wc.action_id(parent_id(g // self.children)[0], child_name(g)),
                        attempt=seq,
                        status={"phase": phase_pb2.ACTION_PHASE_RUNNING, "attempts": seq},
                    )
                    sent = clock()
                    try:
                        await self.stub.Update(request, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        errors += 1
                        if errors <= 5:
                            print(f"  update {child_name(g)} #{seq}: {exc.code().name}: "
                                  f"{exc.details()}", file=sys.stderr)  # fmt: skip
                        return
                    done.append((g, seq, sent, clock()))
            finally:
                sem.release()

        total = int(rate * seconds) if count is None else count
        start = time.monotonic()
        issued = 0
        while issued < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while issued < due:
                await sem.acquire()
                g = self.order[self.cursor % len(self.order)]
                self.cursor += 1
                task = asyncio.create_task(one(g))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                issued += 1
            next_at = start + issued / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)
        return done, errors


LAG = "actions_watch_delivery_lag_seconds_bucket"


def lag_buckets(metrics: dict[str, float]) -> dict[float, float]:
    """The server's delivery-lag histogram (fan-out read -> stream took the update):
    cumulative count per upper bound in seconds; empty when the server has none."""
    out: dict[float, float] = {}
    for key, value in metrics.items():
        if key.startswith(LAG + "{"):
            bound = key.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = value
    return out


def lag_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile ``q`` of the
    observations between two scrapes; nan without data."""
    bounds = sorted(after)
    total = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    if not bounds or total <= 0:
        return float("nan")
    for bound in bounds:
        if after[bound] - before.get(bound, 0) >= q * total:
            return bound * 1000
    return float("inf")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def analyse(
    step: Step,
    updates: list[tuple[int, int, int, int]],
    records: list[tuple[int, str, int, int]],
    streams_of: list[list[int]],
    children: int,
    last_seen: dict[tuple[int, int], int],
) -> None:
    received: dict[tuple[int, int, int], int] = {}
    for stream, name, seq, t in records:
        g = int(name[1:])
        received.setdefault((stream, g, seq), t)
        key = (stream, g)
        if seq > last_seen.get(key, 0):
            last_seen[key] = seq
    latencies: list[float] = []
    rpc: list[float] = []
    for g, seq, sent, returned in updates:
        rpc.append((returned - sent) / 1e6)
        for stream in streams_of[g // children]:
            step.expected += 1
            t = received.get((stream, g, seq))
            if t is not None:
                step.delivered += 1
                latencies.append((t - returned) / 1e6)
            elif last_seen.get((stream, g), 0) > seq:
                step.coalesced += 1
            else:
                step.lost += 1
    latencies.sort()
    rpc.sort()
    step.p50_ms = percentile(latencies, 0.50)
    step.p99_ms = percentile(latencies, 0.99)
    if latencies:
        step.max_ms, step.min_ms = latencies[-1], latencies[0]
    step.update_p50_ms = percentile(rpc, 0.50)


# --------------------------------------------------------------------------- phases


async def wait_metric(server: Server, key: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    value = -1
    while time.monotonic() < deadline:
        value = (await asyncio.to_thread(server.metrics))[key]
        if value == want:
            break
        await asyncio.sleep(0.2)
    return value


async def memory_phase(
    server: Server, watchers: WatcherProcess, args: argparse.Namespace
) -> dict[str, Any]:
    # One stream per parent, as an executor watches its own action; the parents have no
    # children, so a snapshot is only the sentinel and nothing ever changes.
    parents = [(f"idle{i}", "a0") for i in range(args.idle_streams)]
    # Warm-up: the first streams load code and fill caches that are not per stream.
    await watchers.call("open", server.target, parents[:200], 1, args.streams_per_conn)
    await watchers.call("close")
    await wait_metric(server, "watch_streams", 0, 10)
    await asyncio.sleep(1.0)
    before = rss_kib(server.pid)
    _, opened, seconds = await watchers.call(
        "open", server.target, parents, 1, args.streams_per_conn
    )
    await asyncio.sleep(2.0)
    after = rss_kib(server.pid)
    open_streams = (await asyncio.to_thread(server.metrics))["watch_streams"]
    _, records, failures = await watchers.call("collect")
    await watchers.call("close")
    after_close = await wait_metric(server, "watch_streams", 0, 20)
    await asyncio.sleep(1.0)
    rss_closed = rss_kib(server.pid)
    return {
        "streams": opened,
        "connections": -(-opened // args.streams_per_conn),
        "open_seconds": round(seconds, 2),
        "rss_before_kib": before,
        "rss_open_kib": after,
        "rss_after_close_kib": rss_closed,
        "kib_per_stream": round((after - before) / opened, 2),
        "server_watch_streams": open_streams,
        "watch_streams_after_close": after_close,
        "unexpected_updates": len(records),
        "stream_failures": failures,
    }


async def latency_phase(
    server: Server, watchers: WatcherProcess, stub: ActionsServiceStub, args: argparse.Namespace
) -> tuple[list[Step], dict[str, Any]]:
    parents = [parent_id(p) for p in range(args.parents)]
    _, opened, seconds = await watchers.call(
        "open", server.target, parents, args.watchers, args.streams_per_conn
    )
    print(f"latency: {opened} streams open in {seconds:.1f}s", file=sys.stderr)
    streams_of = [
        list(range(p * args.watchers, (p + 1) * args.watchers)) for p in range(args.parents)
    ]
    updater = Updater(stub, args.parents, args.children)
    last_seen: dict[tuple[int, int], int] = {}
    info = {"streams": opened, "open_seconds": round(seconds, 2)}

    # Warm-up, not reported: every child gets one update (leaving QUEUED) as fast as 16
    # concurrent calls go, so that code paths are loaded and no step starts with a backlog.
    await updater.warm_up()
    await asyncio.sleep(1.0)
    _, records, failures = await watchers.call("collect")
    for stream, name, seq, _t in records:
        key = (stream, int(name[1:]))
        last_seen[key] = max(last_seen.get(key, 0), seq)
    if failures:
        raise RuntimeError(f"stream failures during warm-up: {failures[:5]}")

    steps: list[Step] = []
    watcher_pid = watchers.proc.pid
    assert watcher_pid is not None
    for rate in args.rates:
        step = Step(rate, args.step_seconds)
        profiler = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            profiler = Profiler(server.pid, args.profile / f"server-{rate}.json", args.step_seconds)
        lag0 = lag_buckets(await asyncio.to_thread(server.metrics))
        cpu0 = (cpu_seconds(server.pid), cpu_seconds(watcher_pid), time.process_time())
        t0 = time.monotonic()
        updates, step.update_errors = await updater.run(rate, args.step_seconds)
        elapsed = time.monotonic() - t0
        cpu1 = (cpu_seconds(server.pid), cpu_seconds(watcher_pid), time.process_time())
        step.updates = len(updates)
        step.achieved = (len(updates) + step.update_errors) / elapsed
        step.server_cpu = (cpu1[0] - cpu0[0]) / elapsed
        step.watcher_cpu = (cpu1[1] - cpu0[1]) / elapsed
        step.updater_cpu = (cpu1[2] - cpu0[2]) / elapsed
        if profiler:
            profiler.wait()
        # Drain: wait until the watcher holds every expected update (or the deadline).
        expected = len(updates) * args.watchers
        records: list[tuple[int, str, int, int]] = []
        failures: list[str] = []
        drain0 = time.monotonic()
        while True:
            _, got, failed = await watchers.call("collect")
            records += got
            failures += failed
            if len(records) >= expected or time.monotonic() - drain0 > args.drain_seconds:
                break
            await asyncio.sleep(0.25)
        step.drain_s = time.monotonic() - drain0
        lag1 = lag_buckets(await asyncio.to_thread(server.metrics))
        step.server_lag_p50_ms = lag_quantile(lag0, lag1, 0.50)
        step.server_lag_p99_ms = lag_quantile(lag0, lag1, 0.99)
        step.stream_failures = failures
        analyse(step, updates, records, streams_of, args.children, last_seen)
        steps.append(step)
        print(f"  {row(step)}", file=sys.stderr)
        if failures or (step.p99_ms > args.stop_above_ms and not args.all_steps):
            if not failures:
                print(f"  p99 above {args.stop_above_ms:.0f} ms: later steps skipped "
                      f"(--all-steps runs them)", file=sys.stderr)  # fmt: skip
            break
    await watchers.call("close")
    info["watch_streams_after_close"] = await wait_metric(server, "watch_streams", 0, 20)
    info["metrics"] = await asyncio.to_thread(server.metrics)
    return steps, info


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = len(git("status", "--porcelain", "--", "src").splitlines())
    return {
        "commit": git("rev-parse", "--short", "HEAD")
        + (f" + {dirty} uncommitted files in src/" if dirty else ""),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "hypercorn": version("hypercorn"),
        "trio": version("trio"),
        "grpcio (client)": version("grpcio"),
    }


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


HEADER = (
    "| updates/s target | achieved | fan-out | Update p50 ms | e2e p50 ms | e2e p99 ms "
    "| max ms | server lag p50/p99 ms | delivered / expected | coalesced | lost | server CPU "
    "| server CPU ms/update | watcher CPU |"
)


def row(s: Step) -> str:
    fan = s.expected / s.updates if s.updates else 0
    cpu_ms = 1000 * s.server_cpu / s.achieved if s.achieved else float("nan")
    lag = f"≤{s.server_lag_p50_ms:g} / ≤{s.server_lag_p99_ms:g}"
    return (
        f"| {s.rate:,} | {s.achieved:,.0f} | {fan:.0f} | {s.update_p50_ms:.2f} | {s.p50_ms:.2f} "
        f"| {s.p99_ms:.2f} | {s.max_ms:.1f} | {lag} | {s.delivered:,} / {s.expected:,} "
        f"| {s.coalesced:,} "
        f"| {s.lost:,} | {s.server_cpu:.0%} | {cpu_ms:.2f} | {s.watcher_cpu:.0%} |"
    )


def report(
    args: argparse.Namespace,
    steps: list[Step],
    memory: dict[str, Any] | None,
    info: dict[str, Any],
    facts: dict[str, str],
    loads: tuple[str, str],
) -> str:
    lines = [
        f"Watch fan-out, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{'long' if args.long else 'quick'} mode, {args.step_seconds:g} s per step",
        "machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()),
        f"before: {loads[0]}; after: {loads[1]}",
        "",
    ]
    if steps:
        lines += [
            f"Latency: {info['streams']:,} streams = {args.parents} parents x {args.watchers} "
            f"watchers, {args.children} children per parent; {args.streams_per_conn} streams "
            "per h2c connection",
            "",
            HEADER,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [row(s) for s in steps]
        held = [s.rate for s in steps if s.p99_ms < LATENCY_LIMIT_MS and s.lost == 0]
        lines.append("")
        lines.append(
            f"highest rate with p99 < {LATENCY_LIMIT_MS:.0f} ms: "
            + (f"{max(held):,} updates/s" if held else "none of the steps")
        )
        aim = next((s for s in steps if s.rate == AIM_RATE), None)
        if aim is not None:
            ok = aim.p99_ms < AIM_P99_MS
            lines.append(
                f"aim p99 < {AIM_P99_MS:.0f} ms at {AIM_RATE:,}/s: {aim.p99_ms:.1f} ms "
                f"({'met' if ok else 'NOT met'})"
            )
    if memory:
        ok = memory["kib_per_stream"] < AIM_KIB
        lines += [
            "",
            f"Memory: {memory['streams']:,} idle streams over {memory['connections']} h2c "
            f"connections (opened in {memory['open_seconds']} s): server RSS "
            f"{memory['rss_before_kib']:,} -> {memory['rss_open_kib']:,} KiB = "
            f"**{memory['kib_per_stream']:.1f} KiB per stream** (aim < {AIM_KIB:.0f}: "
            f"{'met' if ok else 'NOT met'}); /metrics watch_streams "
            f"{memory['server_watch_streams']:,} open, {memory['watch_streams_after_close']} "
            f"after close (RSS then {memory['rss_after_close_kib']:,} KiB)",
        ]
    return "\n".join(lines)


def parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def run(args: argparse.Namespace) -> int:
    facts = machine()
    load_before = load()
    workdir = Path(tempfile.mkdtemp(prefix="watch-fanout-"))
    watchers = WatcherProcess()
    try:
        server = Server(workdir, args.server_script)
    except BaseException:
        watchers.stop()
        raise
    status = 0
    try:
        print(f"server pid {server.pid} on {server.target}; log {server.log}", file=sys.stderr)
        channel = grpc.aio.insecure_channel(server.target, options=wc.CHANNEL_OPTIONS)
        stub = ActionsServiceStub(channel)
        seconds = await setup_actions(stub, args.parents, args.children)
        print(f"setup: {args.parents} parents x {args.children} children in {seconds:.1f}s",
              file=sys.stderr)  # fmt: skip
        memory = None
        if args.idle_streams:
            memory = await memory_phase(server, watchers, args)
            print(f"memory: {memory}", file=sys.stderr)
            if (
                memory["stream_failures"]
                or memory["watch_streams_after_close"] != 0
                or memory["server_watch_streams"] != memory["streams"]
            ):
                status = 1
        steps: list[Step] = []
        info: dict[str, Any] = {}
        if args.rates:
            steps, info = await latency_phase(server, watchers, stub, args)
        await channel.close()
        text = report(args, steps, memory, info, facts, (load_before, load()))
        print(text)
        if info.get("metrics"):
            shown = {
                k.removeprefix("actions_watch_"): v
                for k, v in info["metrics"].items()
                if (k.startswith("actions_watch_") or k == "watch_streams" or "_" not in k)
                and "_bucket" not in k
                and not k.endswith("_created")
                and "shard" not in k
            }
            print(f"\nserver /metrics after the run: {shown}")
        for s in steps:
            if s.lost or s.update_errors or s.stream_failures:
                status = 1
                print(f"FAIL at {s.rate}/s: lost={s.lost} update_errors={s.update_errors} "
                      f"stream_failures={s.stream_failures[:5]}")  # fmt: skip
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": facts,
                        "load": [load_before, load()],
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "steps": [asdict(s) for s in steps],
                        "memory": memory,
                        "latency_info": info,
                    },
                    indent=2,
                )
            )
    finally:
        watchers.stop()
        code = server.stop()
        if code not in (0, None):
            print(f"server exited with {code}; log {server.log}", file=sys.stderr)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", action="store_true", help="more rates, 15 s per step")
    parser.add_argument("--rates", type=parse_rates, help="updates/s steps, comma-separated")
    parser.add_argument("--step-seconds", type=float, help="seconds per rate step")
    parser.add_argument("--parents", type=int, default=100)
    parser.add_argument("--children", type=int, default=10, help="children per parent")
    parser.add_argument("--watchers", type=int, default=10, help="streams per parent")
    parser.add_argument("--idle-streams", type=int, default=10_000, help="0 skips memory")
    parser.add_argument(
        "--streams-per-conn",
        type=int,
        default=100,
        help="watch streams per h2c connection (the server allows 1000)",
    )
    parser.add_argument("--drain-seconds", type=float, default=15)
    parser.add_argument("--stop-above-ms", type=float, default=1000,
                        help="skip higher rates once a step's p99 is above this")  # fmt: skip
    parser.add_argument("--all-steps", action="store_true", help="never skip a step")
    parser.add_argument("--profile", type=Path, help="py-spy the server per step into DIR")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--server-script",
        type=Path,
        help="run this Python file instead of -m actions.cli (A/B runs of a patched server;"
        " it gets the same arguments: serve --memory --port 0)",
    )
    args = parser.parse_args()
    if args.rates is None:
        args.rates = LONG_RATES if args.long else QUICK_RATES
    if args.step_seconds is None:
        args.step_seconds = 15.0 if args.long else 4.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
