#!/usr/bin/env python
"""Generate connectrpc (0.13+) client/server stubs for flyteidl2 services.

Why: the ``*_connect.py`` modules shipped inside the ``flyteidl2`` wheel were made by an
older protoc-gen-connectrpc; with connectrpc 0.13 every call fails before it reaches the
network (``MethodInfo.__init__() missing 1 required keyword-only argument:
'stream_type'``), and their clients do not default to the google-protobuf codec.

How: the .proto sources are not in the wheel, but the compiled ``*_pb2`` modules carry
their FileDescriptorProtos. This script imports the requested modules, writes the
transitive FileDescriptorSet, and runs grpc_tools' protoc with ``--descriptor_set_in``
and the ``protoc-gen-connectrpc`` plugin (``protobuf=google``). The generated module
imports its messages relatively (``from .actions_service_pb2 import ...``); that import
is rewritten to the absolute ``flyteidl2...`` module so the output can live anywhere.

    python scripts/gen-flyteidl2-connect.py --out some/pkg
    # -> some/pkg/actions_service_connect.py (import as some.pkg.actions_service_connect)

Options: ``--proto`` (repeatable, default flyteidl2/actions/actions_service.proto).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

DEFAULT_PROTOS = ["flyteidl2/actions/actions_service.proto"]


def _module_for(proto: str) -> str:
    return proto.removesuffix(".proto").replace("/", ".").replace("-", "_") + "_pb2"


def descriptor_set(files: list[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """Every file in ``files`` and their imports, dependencies first."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            visit(dep)
        ordered.append(fd)

    for fd in files:
        visit(fd)
    out = descriptor_pb2.FileDescriptorSet()
    for fd in ordered:
        proto = out.file.add()
        fd.CopyToProto(proto)
    return out


def plugin_dir() -> str:
    found = shutil.which("protoc-gen-connectrpc") or shutil.which(
        "protoc-gen-connectrpc", path=str(Path(sys.executable).parent)
    )
    if not found:
        sys.exit("protoc-gen-connectrpc not found: pip install protoc-gen-connectrpc")
    return str(Path(found).parent)


def generate(protos: list[str], out: Path) -> list[Path]:
    files = [importlib.import_module(_module_for(p)).DESCRIPTOR for p in protos]
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        fds = tmpdir / "flyteidl2.binpb"
        fds.write_bytes(descriptor_set(files).SerializeToString())
        gen = tmpdir / "gen"
        gen.mkdir()
        env = {"PATH": f"{plugin_dir()}:/usr/bin:/bin"}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={fds}",
                f"--connectrpc_out={gen}",
                "--connectrpc_opt=protobuf=google",
                *protos,
            ],
            check=True,
            env=env,
        )
        out.mkdir(parents=True, exist_ok=True)
        for proto in protos:
            stem = Path(proto).stem
            package = str(Path(proto).parent).replace("/", ".")
            source = gen / Path(proto).parent / f"{stem}_connect.py"
            text = source.read_text()
            # Relative imports of sibling _pb2 modules -> absolute flyteidl2 imports.
            text = re.sub(
                r"^from \.(\w+_pb2) import", rf"from {package}.\1 import", text, flags=re.M
            )
            if re.search(r"^from \.", text, flags=re.M):
                raise SystemExit(f"{source.name}: unexpected relative import left")
            target = out / source.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--proto", action="append", help="flyteidl2 .proto path (repeatable)")
    args = parser.parse_args()
    for path in generate(args.proto or DEFAULT_PROTOS, args.out):
        print(path)


if __name__ == "__main__":
    main()
