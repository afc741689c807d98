"""Configuration and the ``actions-service serve`` command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from actions_harness import aid, read_snapshot, task_req
from flyteidl2.actions import actions_service_pb2 as pb

from actions import app as app_module
from actions import cli
from actions.config import Config, default_data_dir, from_mapping, load
from connect_proto._client import ConnectClient
from connect_proto._errors import RpcError

PREFIX = "/flyteidl2.actions.ActionsService/"


def test_config_defaults() -> None:
    c = Config()
    assert (c.namespace, c.watch_workers, c.watch_buffer_size) == ("flyte", 10, 100)
    assert (c.host, c.port) == ("127.0.0.1", 8091)
    assert c.resolved_data_dir() == default_data_dir()


def test_config_yaml_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "actions:\n"
        "  kubernetes: {namespace: team-a}\n"
        "  watchWorkers: 3\n"
        "  watchBufferSize: 7\n"
        "  watchSubscriberBufferSize: 9\n"
        "  dataDir: /tmp/x\n"
        "  server: {host: 127.0.0.2, port: 9000}\n"
    )
    c = load(path)
    assert (c.namespace, c.watch_workers, c.watch_buffer_size) == ("team-a", 3, 7)
    assert c.subscriber_buffer_size == 9
    assert (c.host, c.port, c.data_dir) == ("127.0.0.2", 9000, Path("/tmp/x"))


@pytest.mark.parametrize(
    "tree",
    [
        {"actions": {"watchWorkers": 0}},
        {"actions": {"watchBufferSize": "many"}},
        {"actions": {"server": {"port": 70000}}},
    ],
)
def test_config_rejects_bad_values(tree: dict) -> None:
    with pytest.raises(ValueError):
        from_mapping(tree)


def test_flags_override_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("actions: {server: {port: 9000}, kubernetes: {namespace: a}}\n")
    args = cli._parser().parse_args(
        ["serve", "--config", str(path), "--port", "0", "--data-dir", str(tmp_path)]
    )
    c = cli._config(args)
    assert (c.port, c.namespace, c.data_dir) == (0, "a", tmp_path)


def test_main_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "actions-service" in capsys.readouterr().err


class Server:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.log = b""

    async def wait_for(self, pattern: str, seconds: float = 15) -> re.Match[str]:
        assert self.proc.stderr is not None
        with trio.fail_after(seconds):
            while True:
                m = re.search(pattern, self.log.decode(errors="replace"))
                if m:
                    return m
                chunk = await self.proc.stderr.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"server exited: {self.log.decode()}")
                self.log += chunk


async def start_server(data_dir: Path) -> tuple[Server, int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actions.cli", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stderr=subprocess.PIPE,
        env=env,
    )
    server = Server(proc)
    m = await server.wait_for(r"listening on http://127\.0\.0\.1:(\d+)")
    return server, int(m.group(1))


async def test_serve_persists_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server, port = await start_server(tmp_path)
    try:
        assert str(tmp_path) in (await server.wait_for(r"data: (\S+)")).group(1)
        async with ConnectClient(f"http://127.0.0.1:{port}") as client:
            await client.unary(PREFIX + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
            await client.unary(
                PREFIX + "Enqueue", task_req(aid("c1"), parent="a0"), pb.EnqueueResponse
            )
            stream = client.server_stream(
                PREFIX + "WatchForUpdates",
                pb.WatchForUpdatesRequest(parent_action_id=aid("a0")),
                pb.WatchForUpdatesResponse,
            )

            class S:
                async def next(self) -> pb.WatchForUpdatesResponse:
                    return await stream.__anext__()

            with trio.fail_after(10):
                assert set(await read_snapshot(S())) == {"a0", "c1"}
            server.proc.send_signal(signal.SIGTERM)
            # The open stream ends promptly (not after a graceful timeout) with an error.
            with trio.fail_after(4):
                with pytest.raises((RpcError, StopAsyncIteration)):
                    await stream.__anext__()
            await stream.aclose()
        with trio.fail_after(15):
            assert await server.proc.wait() == 0
        await server.wait_for("stopped")
    finally:
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()

    # Restart on the same directory: everything is still there.
    server, port = await start_server(tmp_path)
    try:
        async with ConnectClient(f"http://127.0.0.1:{port}") as client:
            stream = client.server_stream(
                PREFIX + "WatchForUpdates",
                pb.WatchForUpdatesRequest(parent_action_id=aid("a0")),
                pb.WatchForUpdatesResponse,
            )

            class S2:
                async def next(self) -> pb.WatchForUpdatesResponse:
                    return await stream.__anext__()

            with trio.fail_after(10):
                assert set(await read_snapshot(S2())) == {"a0", "c1"}
            await stream.aclose()
    finally:
        server.proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            assert await server.proc.wait() == 0


async def test_app_health_and_metrics_routes() -> None:
    config = Config(port=0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: app_module.serve(
                config,
                open_store=app_module.open_memory_store,
                graceful_timeout=1.0,
                task_status=task_status,
            )
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await http.get("/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            metrics = (await http.get("/metrics")).text
            assert "actions_watch_subscribers 0.0" in metrics
            assert "actions_watch_events_received_total" in metrics
            assert "actions_watch_subscriber_resyncs_total" in metrics
        nursery.cancel_scope.cancel()
