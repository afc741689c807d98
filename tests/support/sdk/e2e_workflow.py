"""Runs in .venv-sdk: the user code of the end-to-end test (tests/interop/test_sdk_runtime.py).

``parent`` runs in the SDK's task runtime (``python -m flyte._bin.runtime a0 ...``), and
each ``add_one`` it calls is enqueued through the SDK's RemoteController to the Actions
Service, run by the test's small executor with the container args from the stored task
template, and its result read back from the output URI the service reports.
"""

from __future__ import annotations

import flyte

env = flyte.TaskEnvironment(name="sdk_e2e")


@env.task
async def add_one(x: int) -> int:
    return x + 1


@env.task
async def parent(n: int) -> int:
    a = await add_one(n)
    b = await add_one(a)
    return b


@env.task
async def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@env.task
async def parent_fails(n: int) -> int:
    return await boom(n)
