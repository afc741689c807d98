"""``actions-service runs`` and ``get`` against a served app, through the real parser."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio
from actions_harness import DOMAIN, ORG, PROJECT, aid, condition_req, task_req, update_req
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2

from actions.app import ActionsApplication, open_memory_store
from actions.cli import _parser
from actions.client_cli import UsageError
from actions.config import Config
from actions.console_cli import parse_when, run_console_command_async
from connect_proto import ConnectClient
from connect_proto._server.serve import make_config
from connect_proto._server.serve import serve as serve_asgi

IDENT = ["--org", ORG, "--project", PROJECT, "--domain", DOMAIN]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    application = ActionsApplication(Config(port=0), open_store=open_memory_store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            serve_asgi, application.app, make_config("127.0.0.1", 0, graceful_timeout=1.0)
        )
        base = f"http://127.0.0.1:{port}"
        async with ConnectClient(base) as client:
            svc = "/flyteidl2.actions.ActionsService/"
            for run in ("r1", "r2", "r3"):
                await client.unary(svc + "Enqueue", task_req(aid("a0", run)), pb.EnqueueResponse)
            await client.unary(
                svc + "Enqueue", condition_req(aid("gate", "r1"), "a0"), pb.EnqueueResponse
            )
            await client.unary(
                svc + "Update",
                update_req(aid("a0", "r2"), phase_pb2.ACTION_PHASE_RUNNING),
                pb.UpdateResponse,
            )
        yield base
        nursery.cancel_scope.cancel()


async def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = _parser().parse_args(argv)
    code = await run_console_command_async(args, out, err)
    return code, out.getvalue(), err.getvalue()


async def test_runs_table_filters_and_pages(url: str) -> None:
    code, out, err = await run(["runs", "--url", url])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["RUN", "PHASE", "CREATED"]
    assert len(lines) == 4
    assert {line.split()[0] for line in lines[1:]} == {f"o/p/development/r{i}" for i in (1, 2, 3)}

    code, out, _ = await run(["runs", "--url", url, "--phase", "running"])
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["o/p/development/r2", "RUNNING"]
    ]
    code, out, _ = await run(["runs", "--url", url, "--limit", "2"])
    assert len(out.splitlines()) == 4  # header, two runs, the "more" line
    token = out.splitlines()[-1].removeprefix("more: --page-token ")
    code, out, _ = await run(["runs", "--url", url, "--limit", "2", "--page-token", token])
    assert len(out.splitlines()) == 2
    code, out, _ = await run(["runs", "--url", url, "--limit", "1", "--all", "--json"])
    assert len(json.loads(out)["runs"]) == 3
    code, out, _ = await run(["runs", "--url", url, "--project", "nobody"])
    assert out == "no runs\n"


async def test_get_prints_the_tree(url: str) -> None:
    code, out, err = await run(["get", "r1", "--url", url, *IDENT])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["a0", "task:fn", "QUEUED"]
    assert lines[2].split()[:4] == ["└", "gate", "condition", "PAUSED"]
    assert "(bool)" in lines[2]
    code, out, _ = await run(["get", "r1", "--url", url, *IDENT, "--json"])
    assert [a["name"] for a in json.loads(out)["actions"]] == ["a0", "gate"]


async def test_errors_are_one_line_with_the_code(url: str) -> None:
    code, out, err = await run(["get", "nope", "--url", url, *IDENT])
    assert (code, out) == (15, "")
    assert err == "error: not_found: run o/p/development/nope not found\n"
    code, _, err = await run(["runs", "--url", url, "--phase", "sleeping"])
    assert code == 13
    assert err.startswith("error: invalid_argument: phases: unknown phase")
    code, _, err = await run(["get", "r1", "--url", url])
    assert code == 2
    assert "--project" in err
    code, _, err = await run(["runs", "--url", url, "--since", "yesterday-ish"])
    assert code == 2
    code, _, err = await run(["runs", "--url", "http://127.0.0.1:1", "--timeout", "2"])
    assert code == 24  # unavailable
    assert err.startswith("error: unavailable:")


def test_parse_when() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_when("2h", now).ToJsonString() == "2026-01-02T10:00:00Z"
    assert parse_when("1.5d", now).ToJsonString() == "2026-01-01T00:00:00Z"
    assert parse_when("2026-01-01T00:00:00Z", now).ToJsonString() == "2026-01-01T00:00:00Z"
    assert parse_when("2026-01-01", now).ToJsonString() == "2026-01-01T00:00:00Z"
    with pytest.raises(UsageError):
        parse_when("soon", now)
