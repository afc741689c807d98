#!/usr/bin/env python
"""Unary RPC benchmark: our layer vs the official connectrpc server vs a bare ASGI ceiling.

Each server runs in its own subprocess (``python -m hypercorn`` loading an app from
bench/apps.py) on 127.0.0.1, listening on a socket this script binds and hands over as
``fd://N``. Load generators are C programs from Debian (a Python one would be the bottleneck on a
small box): ``h2load`` (nghttp2-client) for h2c with prior knowledge, with per-request
latencies from ``--log-file``; ``wrk`` for HTTP/1.1 (``--latency`` percentiles). h2load's
own ``--h1`` mode cannot be used: hypercorn's h11 status line has an empty reason phrase
(``HTTP/1.1 200 ``), h2load then never records the status and counts every response as
failed.

The call: Connect unary ``testsvc.v1.TestService/Echo`` with ``EchoRequest(message="hello")``,
``content-type: application/proto`` (use ``--protocol grpc`` for the gRPC framing on h2).

    python bench/unary.py                       # ~1.5 min: every server x every mode
    python bench/unary.py --duration 10 --json out.json
    python bench/unary.py --servers ours,bare-trio --modes h2-1x64

Servers: ours (trio, 1 worker), ours-w2 (trio, 2 workers), official (connectrpc ASGI
on asyncio, 1 worker), official-w2, bare-trio and bare-asyncio (constant 200: the
ceiling of hypercorn itself). Modes: h2-1x64 (one connection, 64 concurrent streams),
h2-4x16 (4 connections x 16 streams), h1-32 (32 HTTP/1.1 connections, one request at a
time each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support" / "gen"))
sys.path.insert(0, str(ROOT / "bench"))
import _layers  # noqa: E402 - after the path it is found on

ECHO_PATH = "/testsvc.v1.TestService/Echo"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    app: str  # expression hypercorn evaluates in bench.apps
    worker_class: str  # trio | asyncio
    workers: int


SERVERS = {
    s.name: s
    for s in [
        ServerSpec("ours", "ours_app()", "trio", 1),
        ServerSpec("ours-w2", "ours_app()", "trio", 2),
        ServerSpec("official", "official_app()", "asyncio", 1),
        ServerSpec("official-w2", "official_app()", "asyncio", 2),
        ServerSpec("bare-trio", "bare_patched()", "trio", 1),
        ServerSpec("bare-asyncio", "bare", "asyncio", 1),
        # Not in the default matrix: the two trio servers with the hypercorn fixes'
        # write coalescing (fix 6) switched off, for before/after comparisons.
        ServerSpec("ours-nocoal", "ours_nocoal()", "trio", 1),
        ServerSpec("bare-nocoal", "bare_nocoal()", "trio", 1),
    ]
}
DEFAULT_SERVERS = [name for name in SERVERS if not name.endswith("-nocoal")]


@dataclass(frozen=True)
class Mode:
    name: str
    h1: bool
    clients: int
    streams: int  # concurrent streams per connection (1 for HTTP/1.1)


MODES = {
    m.name: m
    for m in [
        Mode("h2-1x64", False, 1, 64),
        Mode("h2-4x16", False, 4, 16),
        Mode("h1-32", True, 32, 1),
    ]
}


@dataclass
class Result:
    server: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    non_2xx: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- servers


HYPERCORN_TOML = """\
keep_alive_max_requests = 1000000000
keep_alive_timeout = 300
h2_max_concurrent_streams = 1000
backlog = 1024
"""


class Server:
    """A hypercorn subprocess serving one bench app on a socket we bound."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        config = workdir / "hypercorn.toml"
        config.write_text(HYPERCORN_TOML)
        self.log = workdir / f"{spec.name}.log"
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "support")])
        )
        env.pop("PYTHONASYNCIODEBUG", None)
        argv = [
            sys.executable,
            "-m",
            "hypercorn",
            "--config",
            str(config),
            "--worker-class",
            spec.worker_class,
            "--workers",
            str(spec.workers),
            "--bind",
            f"fd://{self.sock.fileno()}",
            "--log-level",
            "warning",
            f"bench.apps:{spec.app}",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=[self.sock.fileno()],
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ECHO_PATH}"

    def wait_ready(self, body: bytes, headers: list[str], timeout: float = 60) -> None:
        """Until a real request succeeds (the app is imported and answering)."""
        request = (
            f"POST {ECHO_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
            + "".join(f"{h}\r\n" for h in headers)
            + "connection: close\r\n\r\n"
        ).encode() + body
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                    conn.sendall(request)
                    reply = conn.recv(65536)
                if reply.startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.spec.name} not ready:\n{self.log.read_text()}")

    def alive(self) -> bool:
        """True while every process of the server (master and workers) is running."""
        if self.proc.poll() is not None:
            return False
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return True
        return len(pids) >= self.spec.workers

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.sock.close()


# --------------------------------------------------------------------------- load


def request_body(protocol: str) -> tuple[bytes, list[str]]:
    from testsvc.v1 import test_pb2

    message = test_pb2.EchoRequest(message="hello").SerializeToString()
    if protocol == "grpc":
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        return body, ["content-type: application/grpc", "te: trailers"]
    return message, ["content-type: application/proto", "connect-protocol-version: 1"]


def run_h2load(
    h2load: str,
    url: str,
    mode: Mode,
    body_file: Path,
    headers: list[str],
    duration: float,
    warmup: float,
    workdir: Path,
) -> tuple[float, int, int, int, list[float], str]:
    log_file = workdir / "requests.tsv"
    log_file.unlink(missing_ok=True)
    argv = [
        h2load,
        "-c",
        str(mode.clients),
        "-m",
        str(mode.streams),
        "-t",
        "1",
        "-D",
        f"{int(duration * 1000)}ms",
        "--warm-up-time",
        f"{int(warmup * 1000)}ms",
        "-d",
        str(body_file),
        "--log-file",
        str(log_file),
    ]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
    )
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out}\n{proc.stderr}")
    rps = 0.0
    total = failed = non_2xx = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            parts = dict(
                (p.strip().split(" ", 1)[1], int(p.strip().split(" ", 1)[0]))
                for p in line.removeprefix("requests:").split(",")
            )
            total = parts.get("done", 0)
            failed = parts.get("failed", 0) + parts.get("errored", 0) + parts.get("timeout", 0)
        elif line.startswith("status codes:"):
            codes = {
                p.strip().split(" ", 1)[1]: int(p.strip().split(" ", 1)[0])
                for p in line.removeprefix("status codes:").split(",")
            }
            non_2xx = sum(v for k, v in codes.items() if k != "2xx")
    latencies: list[float] = []
    if log_file.exists():
        for row in log_file.read_text().splitlines():
            cols = row.split("\t")
            if len(cols) >= 3 and cols[1].isdigit():
                latencies.append(int(cols[2]) / 1000.0)  # microseconds -> ms
    return rps, total, failed, non_2xx, latencies, out


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = "{body}"
{headers}
"""


def _lua_bytes(data: bytes) -> str:
    return "".join(f"\\{b}" for b in data)


def _wrk_ms(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
    for unit in ("us", "ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float("nan")


def run_wrk(
    wrk: str,
    url: str,
    mode: Mode,
    body: bytes,
    headers: list[str],
    duration: float,
    warmup: float,
    workdir: Path,
) -> tuple[float, int, int, int, float, float]:
    """HTTP/1.1 load: ``mode.clients`` connections, one request in flight on each."""
    script = workdir / "post.lua"
    lines = []
    for header in headers:
        name, _, value = header.partition(":")
        lines.append(f'wrk.headers["{name.strip()}"] = "{value.strip()}"')
    script.write_text(WRK_SCRIPT.format(body=_lua_bytes(body), headers="\n".join(lines)))
    base = [wrk, "-t", "1", "-c", str(mode.clients), "-s", str(script)]
    if warmup > 0:
        subprocess.run(
            [*base, "-d", f"{max(1, round(warmup))}s", url],
            capture_output=True,
            timeout=warmup + 60,
            check=False,
        )
    proc = subprocess.run(
        [*base, "-d", f"{max(1, round(duration))}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    (workdir / "wrk-last.txt").write_text(proc.stdout + proc.stderr)
    rps = p50 = p99 = float("nan")
    total = failed = non_2xx = 0
    for line in proc.stdout.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif len(parts) == 2 and parts[0] == "50%":
            p50 = _wrk_ms(parts[1])
        elif len(parts) == 2 and parts[0] == "99%":
            p99 = _wrk_ms(parts[1])
        elif "requests in" in line:
            total = int(parts[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            non_2xx = int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            failed = sum(int(p.strip().split()[-1]) for p in line.split(":", 1)[1].split(","))
    return rps, total, failed, non_2xx, p50, p99


def median_results(results: list[Result]) -> list[Result]:
    """One result per (server, mode): the run with the median requests/s."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.mode), []).append(r)
    merged = []
    for runs in groups.values():
        runs.sort(key=lambda r: r.rps)
        chosen = runs[len(runs) // 2]
        chosen.notes = [
            *chosen.notes,
            f"median of {len(runs)}: " + ", ".join(f"{r.rps:.0f}" for r in runs),
        ]
        merged.append(chosen)
    return merged


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


# --------------------------------------------------------------------------- report


def start_profile(server: Server, directory: Path, name: str) -> subprocess.Popen[bytes]:
    """py-spy on the server's processes for the length of one run (warm-up included)."""
    directory.mkdir(parents=True, exist_ok=True)
    return _layers.record(server.proc.pid, directory / f"{name}.txt")


_BUCKETS = [
    ("connect_proto", "our layer (connect_proto)"),
    ("testsvc", "handler (TestServiceImpl)"),
    ("hypercorn", "hypercorn"),
    ("priority/", "priority (h2 stream tree)"),
    ("h2/", "h2 + hyperframe"),
    ("hyperframe/", "h2 + hyperframe"),
    ("hpack/", "hpack"),
    ("h11/", "h11"),
    ("trio/", "trio (scheduler, sockets)"),
    ("asyncio/", "asyncio"),
    ("connectrpc", "connectrpc"),
    ("protobuf", "protobuf"),
]


def profile_summary(raw: Path, top: int = 12) -> str:
    """Self time by package and the hottest functions of a py-spy raw (collapsed) file."""
    by_bucket: dict[str, int] = {}
    by_function: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        bucket = next((label for key, label in _BUCKETS if key in leaf), "other")
        by_bucket[bucket] = by_bucket.get(bucket, 0) + n
        by_function[leaf] = by_function.get(leaf, 0) + n
    if not total:
        return f"{raw.name}: no samples"
    lines = [f"{raw.stem}: {total} samples, self time by package"]
    for label, n in sorted(by_bucket.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * n / total:5.1f}%  {label}")
    lines.append("  hottest functions (self):")
    for leaf, n in sorted(by_function.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {leaf[:110]}")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    h2load_version = subprocess.run(
        [shutil.which("h2load") or "h2load", "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    wrk_version = (
        subprocess.run(
            [shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True, check=False
        )
        .stdout.split("[")[0]
        .strip()
    )
    from importlib.metadata import version

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "hypercorn": version("hypercorn"),
        "trio": version("trio"),
        "connectrpc": version("connectrpc"),
        "h2load": h2load_version,
        "wrk": wrk_version,
        "kernel": platform.release(),
    }


def table(results: list[Result]) -> str:
    modes = list(dict.fromkeys(r.mode for r in results))
    servers = list(dict.fromkeys(r.server for r in results))
    by = {(r.server, r.mode): r for r in results}
    lines = ["| server | " + " | ".join(f"{m} req/s | p50 ms | p99 ms" for m in modes) + " |"]
    lines.append("|---|" + "---:|---:|---:|" * len(modes))
    for s in servers:
        cells = []
        for m in modes:
            r = by.get((s, m))
            if r is None:
                cells.append(" - | - | - ")
            else:
                flag = " (errors)" if r.failed or r.non_2xx else ""
                flag += " (died)" if any("died" in n for n in r.notes) else ""
                cells.append(f" {r.rps:,.0f}{flag} | {r.p50_ms:.2f} | {r.p99_ms:.2f} ")
        lines.append(f"| {s} |" + "|".join(cells) + "|")
    ratios = [
        ("ours / bare-trio (ceiling)", "ours", "bare-trio"),
        ("ours / official", "ours", "official"),
        ("ours-w2 / official", "ours-w2", "official"),
        ("ours-w2 / official-w2", "ours-w2", "official-w2"),
        ("bare-trio / bare-asyncio", "bare-trio", "bare-asyncio"),
        ("ours / ours-nocoal (write coalescing)", "ours", "ours-nocoal"),
        ("bare-trio / bare-nocoal (write coalescing)", "bare-trio", "bare-nocoal"),
    ]
    lines += ["", "| ratio (req/s) | " + " | ".join(modes) + " |"]
    lines.append("|---|" + "---:|" * len(modes))
    for label, a, b in ratios:
        cells = []
        for m in modes:
            ra, rb = by.get((a, m)), by.get((b, m))
            cells.append(f" {ra.rps / rb.rps:.2f} " if ra and rb and rb.rps else " - ")
        lines.append(f"| {label} |" + "|".join(cells) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated names, of {', '.join(SERVERS)}",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated names")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run")
    parser.add_argument("--protocol", choices=["connect", "grpc"], default="connect")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole matrix N times, interleaved, and report the median per cell "
        "(a shared machine drifts; interleaving spreads the drift over all servers)",
    )
    parser.add_argument("--json", type=Path, help="also write results and machine info here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record every run with py-spy (pip install py-spy) into this directory and "
        "print where the server's time goes (slower: sampling costs CPU)",
    )
    args = parser.parse_args()

    h2load = shutil.which("h2load")
    wrk = shutil.which("wrk")
    if not h2load or not wrk:
        sys.exit("h2load and wrk are needed: apt-get install nghttp2-client wrk")
    servers = [SERVERS[s] for s in args.servers.split(",") if s]
    modes = [MODES[m] for m in args.modes.split(",") if m]
    if args.protocol == "grpc":
        modes = [m for m in modes if not m.h1]

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        body, headers = request_body(args.protocol)
        body_file = workdir / "body.bin"
        body_file.write_bytes(body)
        plan = [(spec, mode) for _ in range(args.repeat) for spec in servers for mode in modes]
        for spec, mode in plan:
            # A fresh server per run: one run's aftermath (a server that died) must
            # not leak into the next figure.
            server = Server(spec, workdir)
            try:
                server.wait_ready(*request_body("connect"))
                spy = None
                if args.profile:
                    spy = start_profile(server, args.profile, f"{spec.name}-{mode.name}")
                if mode.h1:
                    rps, total, failed, non_2xx, p50, p99 = run_wrk(
                        wrk, server.url, mode, body, headers, args.duration,
                        args.warmup, workdir,
                    )  # fmt: skip
                else:
                    rps, total, failed, non_2xx, lat, _ = run_h2load(
                        h2load, server.url, mode, body_file, headers, args.duration,
                        args.warmup, workdir,
                    )  # fmt: skip
                    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    spy.wait(60)
                result = Result(spec.name, mode.name, rps, p50, p99, total, failed, non_2xx)
                time.sleep(0.3)
                if not server.alive():
                    result.notes.append("server process died after the run")
            finally:
                server.stop()
            results.append(result)
            print(
                f"{spec.name:13s} {mode.name:8s} {rps:10,.0f} req/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                f"failed {failed} non-2xx {non_2xx}  {'; '.join(result.notes)}",
                flush=True,
            )

    if args.repeat > 1:
        results = median_results(results)
    info = machine()
    print()
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    print(f"protocol: {args.protocol}, duration {args.duration:g}s + warm-up {args.warmup:g}s")
    print()
    print(table(results))
    if args.profile:
        for raw in sorted(args.profile.glob("*.txt")):
            print()
            print(profile_summary(raw))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
