"""``actions-service`` as a real process: TLS and mTLS from flags, SIGTERM under load with
no accepted write lost, the Kubernetes store against the API emulator, and the client
commands of the README walkthrough.

Servers log to a file (not a pipe), so a busy access log can never block them.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
import trio
import trustme
from actions_harness import aid, task_req, update_req
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from grpc_health.v1 import health_pb2, health_pb2_grpc

from connect_proto._client import ConnectClient
from connect_proto._errors import Code, RpcError

ROOT = Path(__file__).resolve().parents[2]
SVC = "/flyteidl2.actions.ActionsService/"
LISTENING = r"listening on (https?)://127\.0\.0\.1:(\d+)"


class ServerProcess:
    def __init__(self, proc: trio.Process, log: Path) -> None:
        self.proc = proc
        self.log_path = log

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, pattern: str, seconds: float = 20) -> re.Match[str]:
        with trio.fail_after(seconds):
            while True:
                found = re.search(pattern, self.log)
                if found:
                    return found
                if self.proc.returncode is not None:
                    raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log}")
                await trio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, seconds: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        with trio.fail_after(seconds):
            return await self.proc.wait()


@asynccontextmanager
async def actions_service(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[ServerProcess, int]]:
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "actions.cli", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = ServerProcess(proc, log)
    try:
        found = await server.wait_for(LISTENING)
        yield server, int(found.group(2))
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(10):
                await proc.wait()


async def read_snapshot(stream: AsyncIterator[pb.WatchForUpdatesResponse]) -> dict[str, int]:
    seen: dict[str, int] = {}
    with trio.fail_after(20):
        async for message in stream:
            if message.HasField("control_message"):
                return seen
            seen[message.action_update.action_id.name] = message.action_update.phase
    raise AssertionError("stream ended before the sentinel")


def watch(client: ConnectClient, parent: str) -> AsyncIterator[pb.WatchForUpdatesResponse]:
    return client.server_stream(
        SVC + "WatchForUpdates",
        pb.WatchForUpdatesRequest(parent_action_id=aid(parent)),
        pb.WatchForUpdatesResponse,
    )


# --------------------------------------------------------------------------- TLS


def _write_server_cert(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "server.pem", directory / "server.key"
    cert.private_key_pem.write_to_path(str(keyfile))
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return certfile, keyfile


def _grpc_health_tls(port: int, root: bytes, key: bytes | None, chain: bytes | None) -> int:
    creds = grpc.ssl_channel_credentials(root, key, chain)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


async def test_tls_and_mutual_tls_from_serve_flags(tmp_path: Path) -> None:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    certfile, keyfile = _write_server_cert(server_ca, tmp_path)
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    tls_args = ["--memory", "--tls-cert", str(certfile), "--tls-key", str(keyfile)]

    def context(issuer: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        server_ca.configure_trust(ctx)
        if issuer is not None:
            issuer.issue_cert("executor@flyte").configure_cert(ctx)
        return ctx

    async with actions_service(tls_args, tmp_path / "tls.log") as (server, port):
        assert re.search(LISTENING, server.log).group(1) == "https"  # type: ignore[union-attr]
        async with ConnectClient(f"https://127.0.0.1:{port}", verify=context()) as client:
            await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        root = server_ca.cert_pem.bytes()
        status = await trio.to_thread.run_sync(lambda: _grpc_health_tls(port, root, None, None))
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert await server.stop() == 0

    mtls_args = [*tls_args, "--tls-client-ca", str(client_ca_file), "--require-client-cert"]
    async with actions_service(mtls_args, tmp_path / "mtls.log") as (server, port):
        url = f"https://127.0.0.1:{port}"
        for issuer in (None, other_ca):
            async with ConnectClient(url, verify=context(issuer)) as client:
                with pytest.raises(RpcError) as info:
                    await client.unary(SVC + "Enqueue", task_req(aid("a1")), pb.EnqueueResponse)
                assert info.value.code == Code.UNAVAILABLE  # the handshake failed
        async with ConnectClient(url, verify=context(client_ca)) as client:
            await client.unary(SVC + "Enqueue", task_req(aid("a1")), pb.EnqueueResponse)
        client_cert = client_ca.issue_cert("executor@flyte")
        key = client_cert.private_key_pem.bytes()
        chain = b"".join(blob.bytes() for blob in client_cert.cert_chain_pems)
        status = await trio.to_thread.run_sync(lambda: _grpc_health_tls(port, root, key, chain))
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert await server.stop() == 0


# --------------------------------------------------------------------------- SIGTERM

PHASES = (P.ACTION_PHASE_QUEUED, P.ACTION_PHASE_INITIALIZING, P.ACTION_PHASE_RUNNING,
          P.ACTION_PHASE_SUCCEEDED)  # fmt: skip
WORKERS = 6
LOAD_SECONDS = 1.5
MAX_CHILDREN_PER_WORKER = 2000  # bounds the loop whatever the machine's speed


async def test_sigterm_under_load_loses_no_accepted_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--graceful-timeout", "5", "--log-format", "json"]
    accepted: dict[str, int] = {}  # child -> the last phase a call returned OK for
    failures: list[Code] = []
    stopping = trio.Event()
    ok_while_stopping: list[str] = []  # calls that were in flight at SIGTERM and finished
    watch_end: list[BaseException | None] = []

    async with actions_service(args, tmp_path / "first.log") as (server, port):
        url = f"http://127.0.0.1:{port}"
        async with ConnectClient(url, http2=True, timeout=15) as client:
            await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
            stream = watch(client, "a0")
            await read_snapshot(stream)

            async def drain_watch() -> None:
                try:
                    async for _ in stream:
                        pass
                    watch_end.append(None)
                except RpcError as exc:
                    watch_end.append(exc)

            async def writer(index: int) -> None:
                for n in range(MAX_CHILDREN_PER_WORKER):
                    name = f"w{index}-{n}"
                    try:
                        await client.unary(
                            SVC + "Enqueue", task_req(aid(name), parent="a0"), pb.EnqueueResponse
                        )
                        accepted[name] = PHASES[0]
                        if stopping.is_set():
                            ok_while_stopping.append(name)
                        for phase in PHASES[1:]:
                            await client.unary(
                                SVC + "Update", update_req(aid(name), phase), pb.UpdateResponse
                            )
                            accepted[name] = phase
                            if stopping.is_set():
                                ok_while_stopping.append(name)
                    except RpcError as exc:
                        failures.append(exc.code)
                        return  # the server is going away

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_watch)
                for index in range(WORKERS):
                    nursery.start_soon(writer, index)
                await trio.sleep(LOAD_SECONDS)
                assert len(accepted) > WORKERS, "no load reached the server"
                server.proc.send_signal(signal.SIGTERM)
                stopping.set()
                with trio.fail_after(30):
                    assert await server.proc.wait() == 0
            log = server.log
    assert failures, "the writers never saw the server stop"
    assert set(failures) <= {Code.UNAVAILABLE, Code.CANCELED}, failures
    (ended,) = watch_end
    assert isinstance(ended, RpcError) and ended.code == Code.UNAVAILABLE, ended
    assert '"msg": "stopped"' in log and '"msg": "store closed"' in log

    async with actions_service(args, tmp_path / "second.log") as (server, port):
        async with ConnectClient(f"http://127.0.0.1:{port}", timeout=15) as client:
            stream = watch(client, "a0")
            stored = await read_snapshot(stream)
            await stream.aclose()
        assert await server.stop() == 0
    lost = {name: phase for name, phase in accepted.items() if name not in stored}
    assert not lost, f"accepted enqueues missing after restart: {sorted(lost)[:5]}"
    behind = {
        name: (P.ActionPhase.Name(phase), P.ActionPhase.Name(stored[name]))  # type: ignore[arg-type]
        for name, phase in accepted.items()
        if PHASES.index(stored[name]) < PHASES.index(phase)  # type: ignore[arg-type]
    }
    assert not behind, f"accepted updates lost: {list(behind.items())[:5]}"
    print(f"accepted {len(accepted)} actions; {len(ok_while_stopping)} calls OK after SIGTERM")


# --------------------------------------------------------------------------- Kubernetes


async def _status(http: httpx.AsyncClient, path: str) -> int:
    try:
        return (await http.get(path)).status_code
    except httpx.TransportError:
        return 0


async def _wait_status(http: httpx.AsyncClient, path: str, want: int, seconds: float) -> None:
    with trio.fail_after(seconds):
        while await _status(http, path) != want:  # noqa: ASYNC110 (polling another process)
            await trio.sleep(0.1)


async def test_kubernetes_store_against_the_emulator(tmp_path: Path) -> None:
    from kube_emulator import Emulator

    with Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=["flyte"]) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", namespace="flyte")
        args = ["--store", "kubernetes", "--kubeconfig", str(kubeconfig)]
        env = {"ACTIONS_KUBERNETES_CONNECT_TIMEOUT": "1"}
        # Start while the API server is away: alive, not ready, then ready once it is back.
        await trio.to_thread.run_sync(emu.refuse_connections)
        async with (
            actions_service(args, tmp_path / "k8s.log", env) as (server, port),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
            ConnectClient(f"http://127.0.0.1:{port}") as client,
        ):
            assert await _status(http, "/healthz") == 200
            assert await _status(http, "/readyz") == 503
            await trio.to_thread.run_sync(emu.accept_connections)
            await _wait_status(http, "/readyz", 200, 60)
            await client.unary(SVC + "Enqueue", task_req(aid("a0")), pb.EnqueueResponse)
            await client.unary(
                SVC + "Enqueue", task_req(aid("c1"), parent="a0"), pb.EnqueueResponse
            )
            stream = watch(client, "a0")
            assert await read_snapshot(stream) == {
                "a0": P.ACTION_PHASE_QUEUED,
                "c1": P.ACTION_PHASE_QUEUED,
            }
            await client.unary(
                SVC + "Update", update_req(aid("c1"), P.ACTION_PHASE_RUNNING), pb.UpdateResponse
            )
            with trio.fail_after(10):
                update = (await stream.__anext__()).action_update
            assert (update.action_id.name, update.phase) == ("c1", P.ACTION_PHASE_RUNNING)
            await stream.aclose()
            api = _custom_api(emu)
            names = await trio.to_thread.run_sync(
                lambda: sorted(
                    o["spec"]["actionName"]
                    for o in api.list_namespaced_custom_object(
                        "flyte.org", "v1", "flyte", "taskactions"
                    )["items"]
                )
            )
            assert names == ["a0", "c1"]

            # The API server goes away: alive, but not ready; back: ready again.
            await trio.to_thread.run_sync(emu.refuse_connections)
            await _wait_status(http, "/readyz", 503, 30)
            assert "[-]store failed" in (await http.get("/readyz?verbose")).text
            assert await _status(http, "/healthz") == 200
            await trio.to_thread.run_sync(emu.accept_connections)
            await _wait_status(http, "/readyz", 200, 60)
            metrics = (await http.get("/metrics")).text
            assert "actions_kubernetes_relists_total" in metrics
            assert await server.stop() == 0


def _custom_api(emu: object) -> object:
    from kubernetes import client

    return client.CustomObjectsApi(emu.api_client())  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- client commands


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    identity = ["--org", "o", "--project", "p", "--domain", "development", "--run", "r1"]
    return subprocess.run(
        [sys.executable, "-m", "actions.cli", *args, "--url", url, *identity],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_client_commands_through_actions_service(tmp_path: Path) -> None:
    async with actions_service(["--memory"], tmp_path / "cli.log") as (server, port):
        url = f"http://127.0.0.1:{port}"

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return _cli(*args, url=url)

        uris = ["--input-uri", "s3://bucket/in", "--run-output-base", "s3://bucket/out"]
        for action, parent in (("a0", None), ("c1", "a0"), ("c2", "a0")):
            extra = ["--parent", parent] if parent else []
            done = await trio.to_thread.run_sync(
                lambda a=action, e=extra: run("enqueue", "--action", a, *e, *uris)
            )
            assert done.returncode == 0, done.stderr
        again = await trio.to_thread.run_sync(lambda: run("enqueue", "--action", "a0", *uris))
        assert again.returncode == 16 and "already_exists" in again.stderr  # 10 + gRPC code 6
        for args in (
            ("update", "--action", "c1", "--phase", "running"),
            ("update", "--action", "c1", "--phase", "succeeded"),
            ("abort", "--action", "c2", "--reason", "not needed"),
        ):
            done = await trio.to_thread.run_sync(lambda a=args: run(*a))
            assert done.returncode == 0, done.stderr
        watched = await trio.to_thread.run_sync(lambda: run("watch", "a0", "--until-done"))
        assert watched.returncode == 0, watched.stderr
        assert re.search(r"c1\s+SUCCEEDED", watched.stdout), watched.stdout
        assert await server.stop() == 0
