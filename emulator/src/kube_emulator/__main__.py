"""Run the emulator as a local cluster: ``kube-emulator`` or ``python -m kube_emulator``.

By default it serves the TaskAction CRD (``k8s/crd.yaml`` of the checkout) and the
namespaces ``default`` and ``flyte``, writes a kubeconfig whose current context points at it
with namespace ``flyte``, and prints one line naming the URL and the kubeconfig:

    kube-emulator serving http://127.0.0.1:PORT (kubeconfig /path, namespace flyte)

Then ``KUBECONFIG=/path kubectl apply -k k8s/`` works. It stops cleanly on SIGTERM or SIGINT;
a failure to start (port in use, unreadable CRD) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .emulator import Emulator
from .errors import StatusError

PROG = "kube-emulator"
DEFAULT_NAMESPACE = "flyte"
CRD_RELATIVE_PATH = Path("k8s") / "crd.yaml"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StartupError(Exception):
    """Why the emulator could not start; printed as one line."""


def default_kubeconfig_path() -> Path:
    """Next to the user's kubeconfig, never over it: ``~/.kube/kube-emulator.yaml``."""
    return Path.home() / ".kube" / "kube-emulator.yaml"


def find_default_crd(cwd: Path | None = None) -> Path | None:
    """``k8s/crd.yaml`` of the working directory, else of the checkout this package is in."""
    package_root = Path(__file__).resolve().parents[3]  # emulator/src/kube_emulator -> repo
    for base in (cwd or Path.cwd(), package_root):
        candidate = base / CRD_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the Kubernetes API emulator as a local cluster (loopback only).",
        epilog="Then: KUBECONFIG=<kubeconfig> kubectl apply -k k8s/",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback only)")
    parser.add_argument(
        "--port", type=int, default=0, metavar="N", help="port; 0 (default) picks a free one"
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        default=None,
        help=f"where to write the kubeconfig (default {default_kubeconfig_path()})",
    )
    parser.add_argument("--no-kubeconfig", action="store_true", help="do not write a kubeconfig")
    parser.add_argument(
        "--context-namespace",
        default=DEFAULT_NAMESPACE,
        metavar="NS",
        help="namespace of the kubeconfig's context (default %(default)s)",
    )
    parser.add_argument(
        "--crd",
        action="append",
        type=Path,
        metavar="PATH",
        default=[],
        help=f"CRD YAML file to install (repeatable; default: {CRD_RELATIVE_PATH} found in the "
        "working directory or the checkout)",
    )
    parser.add_argument("--no-crd", action="store_true", help="install no CRD")
    parser.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        default=[],
        help=f"namespace to create besides 'default' (repeatable; default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--no-namespace",
        action="store_true",
        help=f"create only the 'default' namespace (not {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="WARNING",
        help="DEBUG logs every request (default %(default)s)",
    )
    parser.add_argument(
        "--history-size",
        type=int,
        default=10_000,
        metavar="N",
        help="watch events kept; older resourceVersions answer 410 (default %(default)s)",
    )
    parser.add_argument(
        "--too-large-rv-wait",
        type=float,
        default=3.0,
        metavar="S",
        help="how long a read at a future resourceVersion waits (default %(default)s)",
    )
    parser.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between watch bookmarks (default %(default)s)",
    )
    return parser


def _crd_paths(args: argparse.Namespace) -> list[Path]:
    if args.no_crd:
        if args.crd:
            raise StartupError("--crd and --no-crd contradict each other")
        return []
    if args.crd:
        return list(args.crd)
    found = find_default_crd()
    if found is None:
        raise StartupError(
            f"no {CRD_RELATIVE_PATH} in the working directory or the checkout; "
            "pass --crd PATH or --no-crd"
        )
    return [found]


def _namespaces(args: argparse.Namespace) -> list[str]:
    """Namespaces to create besides ``default``."""
    extra: list[str] = [] if args.no_namespace else (args.namespace or [DEFAULT_NAMESPACE])
    return [ns for ns in extra if ns != "default"]


def as_applied(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as ``kubectl apply`` would have created it (with its last-applied annotation),
    so that applying the same manifest later patches it quietly instead of warning that the
    annotation is missing."""
    body = copy.deepcopy(doc)
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[LAST_APPLIED] = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    return body


def _load_crds(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crds = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise StartupError(f"{path} holds no CustomResourceDefinition")
    return crds


def build_emulator(args: argparse.Namespace) -> Emulator:
    emulator = Emulator(
        host=args.host,
        port=args.port,
        namespaces=["default"],
        history_size=args.history_size,
        too_large_rv_wait=args.too_large_rv_wait,
        bookmark_interval=args.bookmark_interval,
    )
    for namespace in _namespaces(args):
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        emulator.ensure_namespace(
            namespace, annotations=as_applied(manifest)["metadata"]["annotations"]
        )
    for path in _crd_paths(args):
        try:
            for crd in _load_crds(path):
                emulator.apply_crds(as_applied(crd))
        except OSError as exc:
            raise StartupError(f"cannot read CRD {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise StartupError(f"CRD {path} is not valid YAML: {_one_line(exc)}") from None
        except StatusError as exc:
            raise StartupError(f"CRD {path} refused: {exc.message}") from None
        except (AttributeError, KeyError, TypeError) as exc:
            raise StartupError(f"CRD {path} is malformed: {exc!r}") from None
    return emulator


def _start(emulator: Emulator, args: argparse.Namespace) -> str:
    try:
        return emulator.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {args.host}:{args.port}: {reason.lower()}") from None


def _write_kubeconfig(emulator: Emulator, args: argparse.Namespace) -> Path | None:
    if args.no_kubeconfig:
        return None
    path: Path = args.kubeconfig or default_kubeconfig_path()
    try:
        return emulator.write_kubeconfig(path, namespace=args.context_namespace)
    except OSError as exc:
        raise StartupError(f"cannot write kubeconfig {path}: {exc.strerror or exc}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator binds to loopback only")
    if args.kubeconfig is not None and args.no_kubeconfig:
        parser.error("--kubeconfig and --no-kubeconfig contradict each other")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    emulator: Emulator | None = None
    try:
        emulator = build_emulator(args)
        url = _start(emulator, args)
        kubeconfig = _write_kubeconfig(emulator, args)
    except StartupError as exc:
        if emulator is not None:
            emulator.stop()
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    if kubeconfig is None:
        where = "no kubeconfig written"
    else:
        where = f"kubeconfig {kubeconfig}, namespace {args.context_namespace}"
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"{PROG} serving {url} ({where})", flush=True)
    try:
        done.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
