"""``actions-service``: run the service, show its configuration, or call it.

    actions-service serve [--config FILE] [--store embedded|kubernetes|memory] ...
    actions-service config [same flags as serve]      # the effective configuration, YAML
    actions-service enqueue|update|abort|signal|watch ...   # client commands

Configuration precedence: defaults < YAML file (--config or $ACTIONS_CONFIG) <
ACTIONS_* environment variables < flags. ``serve`` stops on SIGTERM or Ctrl-C: watch
streams end with UNAVAILABLE, calls in flight get the grace period, the store is closed,
and the exit status is 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from actions import app as app_module
from actions import config as config_module
from actions.client_cli import CLIENT_COMMANDS, add_client_commands, run_client_command
from connect_proto import TokenFileError, configure_logging, load_token_file

log = logging.getLogger("actions.cli")

EXIT_CONFIG = 2
EXIT_START_FAILED = 1


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Key.flag``, all as text so that errors name the key."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"YAML file with actions.* keys (default ${config_module.CONFIG_ENV})",
    )
    for key in config_module.KEYS:
        if key.flag is None:
            continue
        help_text = f"{key.help} ({key.path}, ${key.env})"
        if key.flag == "--require-client-cert":
            parser.add_argument(key.flag, dest=key.attr, action="store_const", const="true",
                                help=help_text)  # fmt: skip
            continue
        choices = getattr(key.kind, "choices", None) or None
        parser.add_argument(key.flag, dest=key.attr, choices=choices, help=help_text)
    parser.add_argument(
        "--memory",
        dest="store",
        action="store_const",
        const="memory",
        help="same as --store memory: keep all data in memory (lost on exit)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actions-service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Actions Service")
    _add_config_flags(serve)
    show = sub.add_parser("config", help="print the effective configuration (YAML) and exit")
    _add_config_flags(show)
    add_client_commands(sub)
    return parser


def _config(args: argparse.Namespace) -> config_module.Config:
    flags = {key.attr: getattr(args, key.attr, None) for key in config_module.KEYS}
    return config_module.resolve(args.config, flags=flags)


async def _serve(config: config_module.Config) -> None:
    # Receive the signals before starting, so that an early Ctrl-C is a clean stop too.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: app_module.serve(config, task_status=task_status)
            )
            scheme = "https" if config.tls else "http"
            log.info("actions-service listening on %s://%s:%d", scheme, config.host, port)
            if config.store == "embedded":
                where = f"data: {config.resolved_data_dir()}"
            elif config.store == "memory":
                where = "data: memory (nothing is kept)"
            else:
                where = "store: kubernetes"
            log.info("%s; namespace: %s", where, config.namespace)
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        config = _config(args).check_files()
        if config.auth_token_file is not None:
            _check_token_file(config.auth_token_file)
    except (OSError, ValueError) as exc:
        print(f"actions-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        sys.stdout.write(config_module.dump(config))
        return 0
    configure_logging(config.log_format, config.log_level)
    try:
        trio.run(_serve, config)
    except Exception as exc:
        # Start-up failed (the store could not be opened, the port is taken ...): one
        # line that says why; the traceback is in the log above at ERROR already.
        log.error("actions-service could not start: %s", "; ".join(_leaf_messages(exc)))
        return EXIT_START_FAILED
    return 0


def _leaf_messages(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [m for inner in exc.exceptions for m in _leaf_messages(inner)]
    return [f"{type(exc).__name__}: {exc}"]


def _check_token_file(path: Path) -> None:
    """A bad token file is a start-up error naming the key, not a traceback."""
    try:
        load_token_file(path)
    except TokenFileError as exc:
        key = config_module.key_for("auth_token_file").path
        raise config_module.ConfigError(f"{key}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
