"""``actions-service``: the command line entry point.

``actions-service serve`` runs the service on the embedded store, on 127.0.0.1:8091 by
default, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

import trio

from actions import app as app_module
from actions import config as config_module

log = logging.getLogger("actions.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actions-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Actions Service")
    serve.add_argument("--config", type=Path, help="YAML file with actions.* keys")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8091; 0 = any free)")
    serve.add_argument(
        "--data-dir",
        type=Path,
        help=f"embedded store directory (default {config_module.default_data_dir()})",
    )
    serve.add_argument(
        "--memory", action="store_true", help="keep all data in memory (lost on exit)"
    )
    serve.add_argument("--namespace", help="namespace of the TaskAction objects")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ...")
    return parser


def _config(args: argparse.Namespace) -> config_module.Config:
    config = config_module.load(args.config)
    overrides = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "namespace": args.namespace,
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()


async def _serve(config: config_module.Config, memory: bool) -> None:
    open_store = app_module.open_memory_store if memory else app_module.open_embedded_store
    # Receive the signals before starting, so that an early Ctrl-C is a clean stop too.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: app_module.serve(
                    config, open_store=open_store, task_status=task_status
                )
            )
            where = "memory (nothing is kept)" if memory else str(config.resolved_data_dir())
            log.info("actions-service listening on http://%s:%d", config.host, port)
            log.info("data: %s; namespace: %s", where, config.namespace)
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = _config(args)
    except (OSError, ValueError) as exc:
        print(f"actions-service: {exc}", file=sys.stderr)
        return 2
    trio.run(_serve, config, args.memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
