"""A/B of a unary path on several source trees, interleaved: Update (h2load) or Enqueue.

Each ``--tree`` is a checkout (its ``src`` goes first on ``PYTHONPATH``) served by
``actions-service serve`` on a fresh data directory; ``--bare`` adds the bare
hypercorn-trio ceiling (Update only). Rounds alternate between the servers, so a machine
that gets busier or quieter affects them alike; prints medians and the best round, req/s
and server CPU per request.

``--rpc update``: h2load sending the same no-op ``Update`` (bench/side_by_side.py's
load). ``--rpc enqueue``: per round, ``--parents`` new roots and ``--children`` task
children each through grpcio, 32 calls in flight (side_by_side.py's Enqueue phase).

    python bench/update_ab.py --tree /tmp/before --tree . --rounds 6
    python bench/update_ab.py --tree . --bare
    python bench/update_ab.py --rpc enqueue --tree /tmp/before --tree . --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from flyteidl2.actions.actions_service_pb2_grpc import ActionsServiceStub

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _watch_client as wc
import side_by_side as sbs
import watch_fanout as wf


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
    ap.add_argument("--bare", action="store_true", help="add bare hypercorn-trio")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=3000, help="h2load requests per round")
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rpc", choices=("update", "enqueue"), default="update")
    ap.add_argument("--parents", type=int, default=300, help="enqueue: roots per round")
    ap.add_argument("--children", type=int, default=5, help="enqueue: children per root")
    args = ap.parse_args()
    if not args.tree and not args.bare:
        ap.error("nothing to measure: give --tree and/or --bare")
    if args.bare and args.rpc != "update":
        ap.error("--bare answers no Enqueue: it is the ceiling of the Update load only")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers: dict[str, sbs.Proc] = {}
        try:
            for tree in args.tree:
                servers[str(tree)] = start_tree(tree, root / f"t{len(servers)}")
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
                    before = sbs.cpu_seconds(server.pid)
                    if args.rpc == "update":
                        calls, rate = args.requests, sbs.h2load(server.target, body, args)
                    else:
                        calls = args.parents * (args.children + 1)
                        rate = calls / asyncio.run(enqueue_round(server.target, args, round_))
                    rates[name].append(rate)
                    used = sbs.cpu_seconds(server.pid) - before
                    cpu[name].append(used / calls * 1e6)
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


if __name__ == "__main__":
    main()
