"""connectrpc stubs for flyteidl2.actions.ActionsService: shipped ones vs regenerated ones.

Finding (flyteidl2 2.0.53 + connectrpc 0.13.0): the ``actions_service_connect.py`` that
ships in the flyteidl2 wheel was generated for an older connectrpc and fails on every
call before any I/O. ``scripts/gen-flyteidl2-connect.py`` regenerates working stubs from
the descriptors inside the wheel; these tests prove both facts, the second against our
layer serving ActionsService with a small fake implementation (in-process, trio).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType

import pytest
import trio
from connectrpc.code import Code as ClientCode
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from flyteidl2.actions import actions_service_pb2 as pb
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport
from servers import ROOT

from connect_proto import Code, RpcError
from connect_proto._app.app import ConnectApp
from connect_proto._context import RequestContext
from connect_proto._server.serve import make_config, serve

SERVICE = pb.DESCRIPTOR.services_by_name["ActionsService"]


def test_shipped_stubs_fail_on_connectrpc_0_13() -> None:
    """If this starts failing, flyteidl2 ships usable stubs again: drop the script."""
    from flyteidl2.actions import actions_service_connect as shipped

    client = shipped.ActionsServiceClientSync("http://127.0.0.1:9")
    with pytest.raises(TypeError, match="stream_type"):
        client.abort(pb.AbortRequest())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = tmp_path_factory.mktemp("flyteidl2_connect")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-flyteidl2-connect.py"), "--out", str(out)],
        check=True,
    )
    path = out / "actions_service_connect.py"
    spec = importlib.util.spec_from_file_location("flyteidl2_actions_connect_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeActions:
    async def abort(self, request: pb.AbortRequest, ctx: RequestContext) -> pb.AbortResponse:
        if request.reason == "deny":
            raise RpcError(Code.PERMISSION_DENIED, f"cannot abort {request.action_id.name}")
        ctx.response_headers.add("x-aborted", request.action_id.name)
        return pb.AbortResponse()

    async def watch_for_updates(
        self,
        request: pb.WatchForUpdatesRequest,
        ctx: RequestContext,
        send: Callable[[pb.WatchForUpdatesResponse], Awaitable[None]],
    ) -> None:
        for _ in range(2):
            response = pb.WatchForUpdatesResponse()
            response.control_message.sentinel = True
            await send(response)


@pytest.mark.parametrize(
    ("protocol", "http"),
    [
        (ProtocolType.CONNECT, HTTPVersion.HTTP1),
        (ProtocolType.GRPC, HTTPVersion.HTTP2),
        (ProtocolType.GRPC_WEB, HTTPVersion.HTTP2),
    ],
    ids=["connect-h1", "grpc-h2c", "grpcweb-h2c"],
)
async def test_generated_stubs_against_our_layer(
    generated: ModuleType, protocol: ProtocolType, http: HTTPVersion
) -> None:
    app = ConnectApp(services=[(SERVICE, FakeActions())])

    def calls(url: str) -> None:
        transport = SyncHTTPTransport(http_version=http)
        try:
            client = generated.ActionsServiceClientSync(
                url, protocol=protocol, http_client=SyncClient(transport)
            )
            request = pb.AbortRequest(reason="r")
            request.action_id.name = "a1"
            assert client.abort(request) == pb.AbortResponse()
            updates = list(client.watch_for_updates(pb.WatchForUpdatesRequest()))
            assert [u.control_message.sentinel for u in updates] == [True, True]
            request.reason = "deny"
            with pytest.raises(ConnectError) as info:
                client.abort(request)
            assert info.value.code == ClientCode.PERMISSION_DENIED
            assert info.value.message == "cannot abort a1"
            with pytest.raises(ConnectError) as info:
                client.signal(pb.SignalRequest())
            assert info.value.code == ClientCode.UNIMPLEMENTED
        finally:
            transport.close()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, app, make_config("127.0.0.1", 0))
        await trio.to_thread.run_sync(calls, f"http://127.0.0.1:{port}")
        nursery.cancel_scope.cancel()
