"""The read API (flyte_actions.console.v1.ConsoleService): ListRuns pages and filters,
GetRun's tree and what each action shows; served on the app's port with the token rules."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from actions_harness import (
    DOMAIN,
    ORG,
    PROJECT,
    Env,
    aid,
    bool_literal,
    condition_req,
    open_env,
    serve_with_tokens,
    task_req,
    update_req,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from actions import naming
from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.console import service as console_service
from actions.console.service import ConsoleService
from actions.store import _meta
from connect_proto import Code, ConnectClient, RequestContext, RpcError
from connect_proto._headers import Headers

CONSOLE = "/flyte_actions.console.v1.ConsoleService/"


def ctx() -> RequestContext:
    return RequestContext(
        method=CONSOLE + "ListRuns", protocol="direct", request_headers=Headers(), deadline=math.inf
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """creationTimestamp is whole seconds: each object gets the next second from here."""
    seconds = count(1_800_000_000)
    now = [0]

    def fake() -> str:
        now[0] = next(seconds)
        ts = Timestamp(seconds=now[0])
        return ts.ToJsonString()

    monkeypatch.setattr(_meta, "now_timestamp", fake)
    yield now


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with open_env("direct") as e:
        yield e


def console(env: Env) -> ConsoleService:
    return ConsoleService(lambda: env.store)


async def make_runs(env: Env, names: list[str], **kw: Any) -> None:
    for name in names:
        await env.client.enqueue(task_req(aid("a0", name, **kw)))


def names(response: cpb.ListRunsResponse) -> list[str]:
    return [r.run.name for r in response.runs]


async def all_runs(svc: ConsoleService, request: cpb.ListRunsRequest) -> list[str]:
    out: list[str] = []
    for _ in range(100):
        response = await svc.list_runs(request, ctx())
        out += names(response)
        if not response.next_page_token:
            return out
        request.page_token = response.next_page_token
    raise AssertionError("no last page")


async def test_list_runs_newest_first_in_pages(env: Env, clock: list[int]) -> None:
    await make_runs(env, [f"r{i}" for i in range(7)])
    await env.client.enqueue(task_req(aid("c1", "r3"), parent="a0"))  # a child: not a run
    svc = console(env)
    first = await svc.list_runs(cpb.ListRunsRequest(page_size=3), ctx())
    assert names(first) == ["r6", "r5", "r4"]
    assert first.next_page_token
    run = first.runs[0]
    assert (run.run.org, run.run.project, run.run.domain) == (ORG, PROJECT, DOMAIN)
    assert run.root_action == "a0"
    assert run.phase == "QUEUED"
    assert run.created_at.seconds > 0
    assert await all_runs(svc, cpb.ListRunsRequest(page_size=3)) == [
        f"r{i}" for i in range(6, -1, -1)
    ]
    whole = await svc.list_runs(cpb.ListRunsRequest(page_size=7), ctx())
    assert len(whole.runs) == 7
    assert not whole.next_page_token


async def test_list_runs_filters(env: Env, clock: list[int]) -> None:
    await make_runs(env, ["a1", "a2"], project="alpha")
    await make_runs(env, ["b1"], project="beta", domain="production")
    started = clock[0]
    await make_runs(env, ["b2", "b3"], project="beta")
    await env.client.update(
        update_req(aid("a0", "b2", project="beta"), phase_pb2.ACTION_PHASE_RUNNING)
    )
    svc = console(env)
    assert await all_runs(svc, cpb.ListRunsRequest(project="alpha")) == ["a2", "a1"]
    # The org is an annotation (the spec has none): it filters too.
    assert await all_runs(svc, cpb.ListRunsRequest(org=ORG, project="alpha")) == ["a2", "a1"]
    assert await all_runs(svc, cpb.ListRunsRequest(org="other-org")) == []
    assert await all_runs(svc, cpb.ListRunsRequest(project="beta", domain="production")) == ["b1"]
    assert await all_runs(svc, cpb.ListRunsRequest(phases=["running"])) == ["b2"]
    assert await all_runs(svc, cpb.ListRunsRequest(phases=["QUEUED"], project="beta")) == [
        "b3",
        "b1",
    ]
    after = cpb.ListRunsRequest(created_after=Timestamp(seconds=started + 1))
    assert await all_runs(svc, after) == ["b3", "b2"]
    before = cpb.ListRunsRequest(created_before=Timestamp(seconds=started + 1), page_size=1)
    assert await all_runs(svc, before) == ["b1", "a2", "a1"]
    assert await all_runs(svc, cpb.ListRunsRequest(project="nobody")) == []


async def test_list_runs_phase_filter_reads_a_bounded_number_of_roots(
    env: Env, clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_service, "SCAN_BUDGET", 4)
    await make_runs(env, [f"r{i}" for i in range(10)])
    await env.client.update(update_req(aid("a0", "r0"), phase_pb2.ACTION_PHASE_RUNNING))
    svc = console(env)
    request = cpb.ListRunsRequest(phases=["RUNNING"])
    first = await svc.list_runs(request, ctx())
    assert names(first) == []  # four roots read, none RUNNING: an empty page, not the end
    assert first.next_page_token
    assert await all_runs(svc, request) == ["r0"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (cpb.ListRunsRequest(page_size=-1), "page_size"),
        (cpb.ListRunsRequest(page_token="not-a-token"), "page_token"),
        (cpb.ListRunsRequest(page_token="W10"), "page_token"),  # "[]"
        (cpb.ListRunsRequest(phases=["SLEEPING"]), "unknown phase"),
        (cpb.ListRunsRequest(created_after=Timestamp(seconds=10**15)), "created_after"),
        (cpb.ListRunsRequest(created_before=Timestamp(seconds=-(10**15))), "created_before"),
    ],
)
async def test_list_runs_bad_request_is_invalid_argument(
    env: Env, request_: cpb.ListRunsRequest, message: str
) -> None:
    with pytest.raises(RpcError) as info:
        await console(env).list_runs(request_, ctx())
    assert info.value.code == Code.INVALID_ARGUMENT
    assert message in info.value.message


async def test_page_token_is_refused_with_other_filters(env: Env, clock: list[int]) -> None:
    await make_runs(env, ["r1", "r2", "r3"])
    svc = console(env)
    first = await svc.list_runs(cpb.ListRunsRequest(page_size=1), ctx())
    with pytest.raises(RpcError) as info:
        await svc.list_runs(
            cpb.ListRunsRequest(page_size=1, project="other", page_token=first.next_page_token),
            ctx(),
        )
    assert info.value.code == Code.INVALID_ARGUMENT


async def test_page_size_is_capped(env: Env, clock: list[int]) -> None:
    await make_runs(env, ["r1", "r2"])
    response = await console(env).list_runs(cpb.ListRunsRequest(page_size=10**6), ctx())
    assert names(response) == ["r2", "r1"]


async def test_get_run_tree_and_details(env: Env, clock: list[int]) -> None:
    c = env.client
    await c.enqueue(task_req(aid("a0")))
    await c.enqueue(task_req(aid("b1"), parent="a0"))
    await c.enqueue(condition_req(aid("gate"), parent="a0"))
    await c.enqueue(task_req(aid("b2"), parent="b1"))
    await c.enqueue(condition_req(aid("done"), parent="a0"))
    await c.update(update_req(aid("b1"), phase_pb2.ACTION_PHASE_RUNNING, attempt=2))
    await c.update(update_req(aid("b1"), phase_pb2.ACTION_PHASE_FAILED, attempt=2))
    # The executor writes errorState directly on the status.
    obj = await env.store.get(naming.object_name(aid("b1")))
    obj["status"]["errorState"] = {"code": "OOM", "kind": "USER", "message": "out of memory"}
    await env.store.update_status(obj)
    await c.signal(pb.SignalRequest(action_id=aid("done"), parent_action_name="a0",
                                    value=bool_literal(True)))  # fmt: skip
    # An abort leaves its reason on the object before deleting it: seen while it goes.
    b2 = naming.object_name(aid("b2"))
    await env.store.patch_annotations(b2, {"flyte.org/abort-reason": "not needed"})
    await c.enqueue(task_req(aid("x0", "other-run")))

    response = await console(env).get_run(
        cpb.GetRunRequest(run=cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name="r1")), ctx()
    )
    views = {a.name: a for a in response.actions}
    assert [a.name for a in response.actions] == ["a0", "b1", "b2", "gate", "done"]
    assert [views[n].parent for n in ("a0", "b1", "b2")] == ["", "a0", "b1"]
    b1 = views["b1"]
    assert b1.phase == "FAILED"
    assert b1.attempts == 2
    assert [h.phase for h in b1.phase_history] == ["QUEUED", "RUNNING", "FAILED"]
    assert b1.HasField("started_at")
    assert b1.HasField("ended_at")
    assert (b1.error.kind, b1.error.code, b1.error.message) == ("USER", "OOM", "out of memory")
    assert views["b2"].abort_reason == "not needed"
    gate = views["gate"]
    assert (gate.type, gate.phase) == ("condition", "PAUSED")
    assert gate.condition.value_type == "bool"
    assert gate.condition.value == ""
    assert not gate.HasField("ended_at")
    assert views["done"].condition.value == "true"
    assert views["done"].phase == "SUCCEEDED"


async def test_get_run_prompt_from_the_condition_spec(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    request = condition_req(aid("ask"), parent="a0")
    request.action.condition.prompt = "Deploy to production?"
    request.action.condition.description = "the release gate"
    await env.client.enqueue(request)
    response = await console(env).get_run(
        cpb.GetRunRequest(run=cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name="r1")), ctx()
    )
    ask = next(a for a in response.actions if a.name == "ask")
    assert ask.condition.prompt == "Deploy to production?"
    assert ask.condition.description == "the release gate"


async def test_get_run_errors(env: Env) -> None:
    svc = console(env)
    with pytest.raises(RpcError) as info:
        await svc.get_run(
            cpb.GetRunRequest(run=cpb.RunId(project="p", domain="d", name="no")), ctx()
        )
    assert info.value.code == Code.NOT_FOUND
    with pytest.raises(RpcError) as info:
        await svc.get_run(cpb.GetRunRequest(run=cpb.RunId(project="p")), ctx())
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "run.domain" in info.value.message


async def test_unavailable_without_a_store() -> None:
    with pytest.raises(RpcError) as info:
        await ConsoleService(lambda: None).list_runs(cpb.ListRunsRequest(), ctx())
    assert info.value.code == Code.UNAVAILABLE


TOKENS = """
tokens:
  - {name: operator, token: op-token, allow: ["*"]}
  - {name: writer, token: writer-token, allow: ["/flyteidl2.actions.ActionsService/*"]}
"""


def served(tmp_path: Path) -> AbstractAsyncContextManager[str]:
    return serve_with_tokens(tmp_path, TOKENS)


async def test_served_on_the_app_port_under_the_token_rules(tmp_path: Path) -> None:
    async with served(tmp_path) as url:
        operator = {"authorization": "Bearer op-token"}
        async with ConnectClient(url, headers=operator) as client:
            await client.unary(
                "/flyteidl2.actions.ActionsService/Enqueue", task_req(aid("a0")), pb.EnqueueResponse
            )
            response = await client.unary(
                CONSOLE + "ListRuns", cpb.ListRunsRequest(), cpb.ListRunsResponse
            )
            assert names(response) == ["r1"]
        for headers, code in (
            ({}, Code.UNAUTHENTICATED),
            ({"authorization": "Bearer wrong"}, Code.UNAUTHENTICATED),
            ({"authorization": "Bearer writer-token"}, Code.PERMISSION_DENIED),
        ):
            async with ConnectClient(url, headers=headers) as client:
                with pytest.raises(RpcError) as info:
                    await client.unary(
                        CONSOLE + "ListRuns", cpb.ListRunsRequest(), cpb.ListRunsResponse
                    )
                assert info.value.code == code
        # The page itself is public: the data behind it needs the token.
        async with httpx.AsyncClient(base_url=url) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert "text/html" in page.headers["content-type"]
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert "/console/app.js" in page.text
            script = await http.get("/console/app.js")
            assert script.status_code == 200
            assert "WatchRun" in script.text
            assert (await http.get("/console/style.css")).status_code == 200
            assert (await http.post("/")).status_code == 405


async def test_on_the_kubernetes_store() -> None:
    async with open_env("direct", backend="kubernetes") as env:
        await make_runs(env, ["k1", "k2", "k3"])
        await env.client.enqueue(task_req(aid("b1", "k2"), parent="a0"))
        svc = console(env)

        async def listed() -> list[str]:
            return await all_runs(svc, cpb.ListRunsRequest(page_size=2))

        # The informer's cache follows the API server a little later.
        with trio.fail_after(10):
            while True:
                if sorted(await listed()) == ["k1", "k2", "k3"]:
                    break
                await trio.sleep(0.05)
        response = await svc.get_run(
            cpb.GetRunRequest(run=cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name="k2")),
            ctx(),
        )
        assert [(a.name, a.parent) for a in response.actions] == [("a0", ""), ("b1", "a0")]


async def test_hand_made_objects_do_not_break_the_view(env: Env) -> None:
    """Objects written by something else (kubectl, an old version) are shown as far as
    they can be, never an INTERNAL error."""
    await env.client.enqueue(task_req(aid("a0")))
    root = await env.store.get(naming.object_name(aid("a0")))
    labels = dict(root["metadata"]["labels"], **{"flyte.org/is-root": "false"})
    spec = dict(root["spec"], actionName="odd", parentActionName="a0", actionType="condition",
                conditionSpec="not base64!", taskTemplate="")  # fmt: skip
    await env.store.create_with_status(
        {"apiVersion": "flyte.org/v1", "kind": "TaskAction",
         "metadata": {"name": naming.object_name(aid("odd")), "labels": labels,
                      "annotations": root["metadata"].get("annotations", {})},
         "spec": spec},
        {"attempts": 2**40, "phaseHistory": [{"phase": "Executing", "occurredAt": "yesterday"}],
         "signalValue": "%%%", "errorState": "boom"},
    )  # fmt: skip
    response = await console(env).get_run(
        cpb.GetRunRequest(run=cpb.RunId(org=ORG, project=PROJECT, domain=DOMAIN, name="r1")), ctx()
    )
    odd = next(a for a in response.actions if a.name == "odd")
    assert odd.attempts == 2**32 - 1
    assert odd.type == "condition"
    assert not odd.HasField("error")
    assert [h.phase for h in odd.phase_history] == ["RUNNING"]
