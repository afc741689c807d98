"""The two ``flyteidl2.workflow.InternalRunService`` calls the notifier makes, over Connect."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Final, Protocol
from urllib.parse import urlsplit

import httpx
from flyteidl2.workflow import internal_run_service_pb2 as pb

from connect_proto import ConnectClient

SERVICE: Final = pb.DESCRIPTOR.services_by_name["InternalRunService"]
RECORD_ACTION: Final = f"/{SERVICE.full_name}/RecordAction"
UPDATE_ACTION_STATUS: Final = f"/{SERVICE.full_name}/UpdateActionStatus"


class RunServiceClient(Protocol):
    """What the notifier calls. Failures raise ``connect_proto.RpcError``; ``timeout``
    (seconds) is sent to the server as the call's deadline."""

    async def record_action(
        self, request: pb.RecordActionRequest, *, deadline: float
    ) -> pb.RecordActionResponse: ...

    async def update_action_status(
        self, request: pb.UpdateActionStatusRequest, *, deadline: float
    ) -> pb.UpdateActionStatusResponse: ...

    async def aclose(self) -> None: ...


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the run service's base URL, or None (the shape of a
    configuration key's check)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a URL ({exc}): {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {url!r}"
    return None


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; else ValueError saying why."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


class ConnectRunServiceClient:
    """``RunServiceClient`` on ``connect_proto.ConnectClient`` (binary protobuf,
    HTTP/1.1 by default, keep-alive connections)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        http2: bool = False,
        verify: ssl.SSLContext | str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_url(base_url)
        self._client = ConnectClient(
            base_url, headers=headers, http2=http2, verify=verify, transport=transport
        )

    async def record_action(
        self, request: pb.RecordActionRequest, *, deadline: float
    ) -> pb.RecordActionResponse:
        return await self._client.unary(
            RECORD_ACTION, request, pb.RecordActionResponse, timeout_ms=_ms(deadline)
        )

    async def update_action_status(
        self, request: pb.UpdateActionStatusRequest, *, deadline: float
    ) -> pb.UpdateActionStatusResponse:
        return await self._client.unary(
            UPDATE_ACTION_STATUS, request, pb.UpdateActionStatusResponse, timeout_ms=_ms(deadline)
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
