"""``actions-service``: run the service, show its configuration, or call it.

    actions-service serve [--config FILE] [--store embedded|kubernetes|memory] ...
    actions-service config [same flags as serve]      # the effective configuration, YAML
    actions-service enqueue|update|abort|signal|watch ...   # client commands
    actions-service completion bash|zsh               # shell completion script

Configuration precedence: defaults < YAML file (--config or $ACTIONS_CONFIG) <
ACTIONS_* environment variables < flags. ``serve`` binds its port, checks and opens
the store, then answers; it stops on SIGTERM or Ctrl-C: watch streams end with
UNAVAILABLE, calls in flight get the grace period, the store is closed, and the exit
status is 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import trio

from actions import app as app_module
from actions import config as config_module
from actions import log_policy
from actions.cli_parsing import SuggestingParser, upper
from actions.client_cli import (
    CLIENT_COMMANDS,
    EXIT_CODES_HELP,
    add_client_commands,
    run_client_command,
)
from actions.completion import SHELLS, script
from actions.console_cli import CONSOLE_COMMANDS, add_console_commands, run_console_command
from actions.preflight import StartupError
from connect_proto import TokenFileError, configure_logging, load_token_file

log = logging.getLogger("actions.cli")

EXIT_RUNTIME: Final = 1  # the server failed after it started
EXIT_CONFIG: Final = 2  # usage or configuration: nothing was started
DISTRIBUTION: Final = "flyte-actions-service"

SERVE_EXIT_CODES: Final = """\
exit status of serve and config:
  0   stopped on SIGTERM or Ctrl-C (serve), or printed the configuration (config)
  1   the server failed while running (the last log line says why)
  2   bad usage or a configuration that cannot work here: a bad key or value, a
      missing file, the port in use, an unusable data directory or database, a
      missing CRD or namespace; one line names it, and nothing was started
"""


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _default_text(key: config_module.Key) -> str:
    if key.attr == "data_dir":
        return "$XDG_DATA_HOME/actions-service"
    value = getattr(config_module.Config(), key.attr)
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Key.flag``, all as text so that errors name the key."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"YAML file with actions.* keys (default ${config_module.CONFIG_ENV})",
    )
    for key in config_module.KEYS:
        if key.flag is None:
            continue
        help_text = f"{key.help} (default {_default_text(key)}; {key.path}, ${key.env})"
        if key.flag == "--require-client-cert":
            parser.add_argument(key.flag, dest=key.attr, action="store_const", const="true",
                                help=help_text)  # fmt: skip
            continue
        options: dict[str, Any] = {"help": help_text}
        if getattr(key.kind, "choices", None):
            options["choices"] = key.kind.choices  # type: ignore[attr-defined]
        if getattr(key.kind, "upper", False):
            options["type"] = upper  # --log-level debug, as ACTIONS_LOG_LEVEL=debug
        parser.add_argument(key.flag, dest=key.attr, **options)
    parser.add_argument(
        "--memory",
        dest="store",
        action="store_const",
        const="memory",
        help="same as --store memory: keep all data in memory (lost on exit)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="actions-service",
        description=__doc__,
        epilog=f"{SERVE_EXIT_CODES}\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the Actions Service",
        description="Serve the Actions Service (Connect, gRPC and gRPC-Web on one port).",
        epilog=SERVE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_flags(serve)
    show = sub.add_parser(
        "config",
        help="print the effective configuration (YAML) and exit",
        epilog=SERVE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_flags(show)
    add_client_commands(sub)
    add_console_commands(sub)  # runs, get: the read API (actions.console_cli)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script: source <(actions-service completion bash)",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    if args.command in CONSOLE_COMMANDS:
        return run_console_command(args)
    if args.command == "completion":
        sys.stdout.write(script(args.shell, parser))
        return 0
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
    handler = configure_logging(config.log_format, config.log_level)
    log_policy.install(handler)
    return run_server(config)


# CPython's collector thresholds for the server process (defaults: 700, 10, 10). Every
# open watch stream keeps a few hundred tracked objects alive (tasks, frames, h2 state),
# and the store's index one per action; with the defaults the collector rescanned them
# all again and again as they grew: 17 full collections, 4.7 s, while 10,000 streams
# opened (docs/benchmarks.md). Fewer young collections mean far fewer full ones; cyclic
# garbage is still collected, later.
GC_THRESHOLDS: Final = (50_000, 20, 20)


def tune_garbage_collector() -> None:
    """Leave what start-up allocated (modules, the schema) out of every later collection,
    and collect less often (``GC_THRESHOLDS``)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_server(config: config_module.Config) -> int:
    """Serve until stopped; the exit status (0, ``EXIT_CONFIG`` or ``EXIT_RUNTIME``)."""
    tune_garbage_collector()
    try:
        trio.run(_serve, config)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        startup = _startup_errors(exc)
        if startup:
            # The configuration cannot work here: one line per cause, no traceback.
            for error in startup:
                log.error("actions-service could not start: %s", error)
            return EXIT_CONFIG
        log.debug("the server failed", exc_info=exc)
        log.error("actions-service failed: %s", log_policy.exception_summary(exc))
        return EXIT_RUNTIME
    return 0


def _startup_errors(exc: BaseException) -> list[StartupError]:
    """The StartupErrors ``exc`` consists of (looking into exception groups), or []
    when anything else is in there too."""
    if isinstance(exc, StartupError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[StartupError] = []
        for inner in exc.exceptions:
            if isinstance(inner, trio.Cancelled):
                continue
            errors = _startup_errors(inner)
            if not errors:
                return []
            found += errors
        return found
    return []


def _check_token_file(path: Path) -> None:
    """A bad token file is a start-up error naming the key, not a traceback."""
    try:
        load_token_file(path)
    except TokenFileError as exc:
        key = config_module.key_for("auth_token_file").path
        raise config_module.ConfigError(f"{key}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
