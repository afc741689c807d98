"""Main-venv side of the SDK interop tests: the SDK venv, a served Actions Service, and
the JSON-lines agent processes that run SDK code in ``.venv-sdk``."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[3]
SDK_DIR = Path(__file__).resolve().parent
SDK_PYTHON = ROOT / ".venv-sdk" / "bin" / "python"


def sdk_python() -> Path:
    """``.venv-sdk``'s python; skips without it, except in CI (CI=true), where a missing
    SDK venv is a failure: scripts/test.sh creates it with scripts/sdk-venv.sh."""
    if SDK_PYTHON.exists():
        return SDK_PYTHON
    message = f"{SDK_PYTHON} missing: run scripts/sdk-venv.sh"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def sdk_env() -> dict[str, str]:
    """The SDK subprocess environment: no main-venv paths leaking in, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONUNBUFFERED="1", _U_USE_ACTIONS="1", LOG_LEVEL="30")
    return env


class HttpVersions:
    """ASGI middleware that counts the HTTP versions of the requests it passes on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen[scope.get("http_version", "?")] += 1
        await self.app(scope, receive, send)

    def begin_shutdown(self) -> None:
        self.app.begin_shutdown()


@asynccontextmanager
async def served_actions(**config: Any) -> AsyncIterator[tuple[int, Any]]:
    """The Actions Service app (memory store) served on 127.0.0.1:<ephemeral> in this
    trio run, as ``actions-service serve --memory`` builds it; yields (port, app), where
    ``app.http_versions.seen`` counts the HTTP versions of the requests served."""
    from actions.app import build_app
    from actions.config import Config
    from connect_proto._server.serve import make_config
    from connect_proto._server.serve import serve as serve_asgi

    application = build_app(Config(port=0, store="memory", access_log=False, **config))
    application.http_versions = HttpVersions(application.app)  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi,
            application.http_versions,  # type: ignore[attr-defined]
            make_config("127.0.0.1", 0, graceful_timeout=1.0),
        )
        try:
            yield port, application
        finally:
            application.begin_shutdown()
            nursery.cancel_scope.cancel()


class AgentError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('type')}: {reply.get('error')}")
        self.reply = reply


@dataclass
class Agent:
    """A JSON-lines agent process in .venv-sdk: ``await agent.call(op, **args)``;
    calls run concurrently in the agent and are matched to replies by id."""

    proc: trio.Process
    hello: dict[str, Any] = field(default_factory=dict)
    _next: int = 0
    _waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = field(default_factory=dict)
    _ready: trio.Event = field(default_factory=trio.Event)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                reply = json.loads(line)
                if reply.get("id") is None:
                    self.hello = reply
                    self._ready.set()
                    continue
                send = self._waiting.pop(reply["id"])
                await send.send(reply)
        self._ready.set()  # exited before saying hello: sdk_agent reports it
        for send in self._waiting.values():
            send.close()

    async def call(self, op: str, *, seconds: float = 15, **args: Any) -> dict[str, Any]:
        """The agent's reply; AgentError when the SDK call raised."""
        reply = await self.try_call(op, seconds=seconds, **args)
        if not reply["ok"]:
            raise AgentError(reply)
        return reply

    async def try_call(self, op: str, *, seconds: float = 15, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next += 1
        ident = self._next
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[ident] = send
        line = json.dumps({"id": ident, "op": op, **args}).encode() + b"\n"
        async with self._send_lock:
            await self.proc.stdin.send_all(line)
        with trio.fail_after(seconds):
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                raise AssertionError(f"agent exited during {op} {args}") from None


@asynccontextmanager
async def sdk_agent(script: str, *argv: str, log: Path) -> AsyncIterator[Agent]:
    """Runs tests/support/sdk/<script> in .venv-sdk; its stderr (SDK logs) goes to ``log``."""
    python = sdk_python()
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [str(python), str(SDK_DIR / script), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=sdk_env(),
            cwd=str(log.parent),  # not tests/sdk: keep the SDK's imports clean
        )
    agent = Agent(proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent._read)
            with trio.fail_after(20):
                await agent._ready.wait()
            if not agent.hello:
                raise AssertionError("the SDK agent exited at start-up")
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()
    except BaseException:
        text = log.read_text(errors="replace")  # noqa: ASYNC240 - a small file, on failure
        print(f"--- SDK agent log ({log}):\n{text[-6000:]}")
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(5) as scope:
            scope.shield = True
            await proc.wait()


async def run_driver(
    script: str, *argv: str, seconds: float = 40, cwd: Path | str = "/"
) -> dict[str, Any]:
    """Runs tests/support/sdk/<script> to the end in .venv-sdk; its last stdout line is JSON."""
    python = sdk_python()
    with trio.fail_after(seconds):
        result = await trio.run_process(
            [str(python), str(SDK_DIR / script), *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=sdk_env(),
            cwd=str(cwd),
        )
    out = result.stdout.decode(errors="replace")
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"{script} exited {result.returncode}\n{out}\n{err[-6000:]}"
    return json.loads(out.strip().splitlines()[-1])
