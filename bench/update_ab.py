"""A/B of a unary path on several servers, interleaved: Update (h2load) or Enqueue.

Each ``--tree`` is a checkout (its ``src`` goes first on ``PYTHONPATH``) served by
``actions-service serve`` on a fresh data directory; ``--official`` adds the official
connectrpc server (bench/official_actions.py), ``--bare`` the bare hypercorn-trio ceiling
(Update only). Rounds alternate between the servers, so a machine that gets busier or
quieter affects them alike; prints medians and the best round, req/s and server CPU per
request.

``--profile DIR``: three more rounds per server under py-spy (``pip install py-spy``), its
raw profile kept in DIR, and a table of the median CPU per call split by layer (event
loop, HTTP/2, HTTP server, RPC layer, validation, service; bench/_layers.py): where each
server spends a call, side by side.

``--rpc update``: h2load sending the same no-op ``Update`` (bench/side_by_side.py's
load). ``--rpc enqueue``: per round, ``--parents`` new roots and ``--children`` task
children each through grpcio, 32 calls in flight (side_by_side.py's Enqueue phase).

    python bench/update_ab.py --tree /tmp/before --tree . --rounds 6
    python bench/update_ab.py --tree . --bare
    python bench/update_ab.py --rpc enqueue --tree /tmp/before --tree . --rounds 5
    python bench/update_ab.py --rpc enqueue --tree . --official --profile /tmp/layers
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _layers
import _watch_client as wc
import side_by_side as sbs
import watch_fanout as wf

OFFICIAL = "official connectrpc"


def start_tree(tree: Path, workdir: Path) -> sbs.Proc:
    workdir.mkdir()
    port = sbs.free_port()
    argv = [sys.executable, "-m", "actions.cli", "serve", "--port", str(port)]
    argv += ["--data-dir", str(workdir / "data")]
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree.resolve() / "src")
    try:
        return sbs.Proc(f"tree{len(list(workdir.parent.iterdir()))}", argv, port, workdir)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


async def enqueue_round(target: str, args: argparse.Namespace, round_: int) -> float:
    """Seconds to enqueue this round's actions (new run names each round)."""
    async with grpc.aio.insecure_channel(target, options=wc.CHANNEL_OPTIONS) as channel:
        stub = ActionsServiceStub(channel)
        first = 1_000_000 + round_ * args.parents  # clear of the Update load's run
        return await wf.setup_actions(stub, args.parents, args.children, first)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", type=Path, action="append", default=[], help="a checkout")
    ap.add_argument("--official", action="store_true", help="add the official server")
    ap.add_argument("--bare", action="store_true", help="add bare hypercorn-trio")
    ap.add_argument("--profile", type=Path, help="py-spy 3 more rounds per server into DIR")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=3000, help="h2load requests per round")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rpc", choices=("update", "enqueue"), default="update")
    ap.add_argument("--parents", type=int, default=300, help="enqueue: roots per round")
    ap.add_argument("--children", type=int, default=5, help="enqueue: children per root")
    args = ap.parse_args()
    if not args.tree and not args.bare and not args.official:
        ap.error("nothing to measure: give --tree, --official and/or --bare")
    if args.bare and args.rpc != "update":
        ap.error("--bare answers no Enqueue: it is the ceiling of the Update load only")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers: dict[str, sbs.Proc] = {}
        try:
            for tree in args.tree:
                servers[str(tree)] = start_tree(tree, root / f"t{len(servers)}")
            if args.official:
                (root / "official").mkdir()
                servers[OFFICIAL] = sbs.start("official", root / "official")
            if args.bare:
                (root / "bare").mkdir()
                servers["bare hypercorn-trio"] = sbs.start("bare", root / "bare")
            body = root / "update.bin"
            sbs.update_body(body)
            for name, server in servers.items():
                if name != "bare hypercorn-trio":
                    asyncio.run(sbs.enqueue_benchrun(server.target))
            rates: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    rate, cpu_us = one_round(server, body, args, round_)
                    rates[name].append(rate)
                    cpu[name].append(cpu_us)
            profiles: dict[str, Path] = {}
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for index, (name, server) in enumerate(servers.items()):
                    profiles[name] = args.profile / f"{args.rpc}-{index}.txt"
                    spy = _layers.record(server.pid, profiles[name])
                    try:
                        for round_ in range(args.rounds, args.rounds + 3):  # enough samples
                            one_round(server, body, args, round_)
                    finally:
                        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                        spy.wait(30)
        finally:
            for server in servers.values():
                server.stop()
    header = ("server", "req/s median", "best", "CPU µs/req median", "best")
    print(f"{header[0]:40s} {header[1]:>12s} {header[2]:>8s} {header[3]:>18s} {header[4]:>6s}")
    for name in servers:
        print(
            f"{name[-40:]:40s} {statistics.median(rates[name]):12.0f} {max(rates[name]):8.0f} "
            f"{statistics.median(cpu[name]):18.0f} {min(cpu[name]):6.0f}"
        )
    if profiles:
        print_layers({name: statistics.median(cpu[name]) for name in servers}, profiles)


def one_round(
    server: sbs.Proc, body: Path, args: argparse.Namespace, round_: int
) -> tuple[float, float]:
    """(calls per second, server CPU µs per call) of one round of the load."""
    before = sbs.cpu_seconds(server.pid)
    if args.rpc == "update":
        calls, rate = args.requests, sbs.h2load(server.target, body, args)
    else:
        calls = args.parents * (args.children + 1)
        rate = calls / asyncio.run(enqueue_round(server.target, args, round_))
    return rate, (sbs.cpu_seconds(server.pid) - before) / calls * 1e6


def print_layers(cpu_us: dict[str, float], profiles: dict[str, Path]) -> None:
    """µs per call by layer: each server's median CPU per call times the layer's share."""
    shares = {name: _layers.shares(path) for name, path in profiles.items()}
    labels = [label for label, _ in _layers.LAYERS] + [_layers.OTHER]
    names = list(profiles)
    raw = profiles[names[0]].parent
    print(f"\nCPU µs per call by layer (median CPU/call x py-spy share; raw: {raw})")
    print(f"{'layer':48s}" + "".join(f" {name[-20:]:>20s}" for name in names))
    for label in labels:
        cells = [cpu_us[name] * shares[name].get(label, 0.0) for name in names]
        print(f"{label:48s}" + "".join(f" {cell:20.0f}" for cell in cells))
    print(f"{'all':48s}" + "".join(f" {cpu_us[name]:20.0f}" for name in names))


if __name__ == "__main__":
    main()
