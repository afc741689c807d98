"""Run the emulator as a process: ``python -m kube_emulator --port 0 --crd k8s/crd.yaml``.

Prints ``KUBE_EMULATOR_URL=http://127.0.0.1:PORT`` on stdout once it is listening (and
writes a kubeconfig with ``--kubeconfig``); stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .emulator import Emulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback only)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--crd", action="append", default=[], help="CRD YAML file to load")
    parser.add_argument(
        "--namespace", action="append", default=None, help="namespace to create (repeatable)"
    )
    parser.add_argument("--history-size", type=int, default=10_000)
    parser.add_argument("--too-large-rv-wait", type=float, default=3.0)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--kubeconfig", help="write a kubeconfig pointing at the emulator here")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator binds to loopback only")
    emulator = Emulator(
        host=args.host,
        port=args.port,
        crds=args.crd,
        namespaces=args.namespace if args.namespace is not None else ["default"],
        history_size=args.history_size,
        too_large_rv_wait=args.too_large_rv_wait,
        bookmark_interval=args.bookmark_interval,
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    url = emulator.start()
    if args.kubeconfig:
        emulator.write_kubeconfig(args.kubeconfig)
    print(f"KUBE_EMULATOR_URL={url}", flush=True)
    try:
        done.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
