"""Runs in .venv-sdk: helpers for the end-to-end test, with the SDK's own serialisation.

  spec   TASK ROOT_DIR       -> the wire TaskSpec of e2e_workflow.TASK (base64), as
                                ``flyte deploy`` would register it
  inputs TASK PATH N         -> writes TASK's inputs (n=N) to PATH (an inputs.pb)
  output TASK PREFIX         -> reads PREFIX/outputs.pb, prints {"o0": value}
  error  PREFIX              -> reads PREFIX/error.pb, prints {"code", "message", "kind"}

Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import sys

import fsspec


async def main() -> None:
    sys.path.insert(0, os.getcwd())  # the copy of e2e_workflow.py in the run directory
    import e2e_workflow as wf
    from flyte._internal.runtime import convert, io
    from flyte._internal.runtime.task_serde import translate_task_to_wire
    from flyte.models import SerializationContext
    from flyteidl2.core import execution_pb2

    cmd = sys.argv[1]
    task = getattr(wf, sys.argv[2]) if cmd in ("spec", "inputs", "output") else None
    if cmd == "spec":
        ctx = SerializationContext(
            version="v1",
            project="p",
            domain="development",
            org="o",
            root_dir=pathlib.Path(sys.argv[3]),
            interpreter_path=sys.executable,
        )
        spec = translate_task_to_wire(task, ctx)
        print(json.dumps({"spec": base64.b64encode(spec.SerializeToString()).decode()}))
    elif cmd == "inputs":
        n = int(sys.argv[4])
        inputs = await convert.convert_from_native_to_inputs(task.native_interface, n=n)
        fs, path = fsspec.core.url_to_fs(sys.argv[3])
        fs.makedirs(fs._parent(path), exist_ok=True)
        await io.upload_inputs(inputs, sys.argv[3])
        print(json.dumps({"ok": True}))
    elif cmd == "output":
        outputs = await io.load_outputs(io.outputs_path(sys.argv[3]))
        value = await convert.convert_outputs_to_native(task.native_interface, outputs)
        print(json.dumps({"o0": value}))
    elif cmd == "error":
        err = await io.load_error(io.error_path(sys.argv[2]))
        kind = execution_pb2.ExecutionError.ErrorKind.Name(err.kind)
        print(json.dumps({"code": err.code, "message": err.message, "kind": kind}))


if __name__ == "__main__":
    asyncio.run(main())
