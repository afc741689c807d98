"""The service's promises (docs/contract.md), section by section.

Every test body runs on both backends (the embedded store, and the Kubernetes store on the
API emulator), calling the handlers directly and over the wire through connect_proto's
ConnectClient against the served app: every transport on the embedded backend, direct
and HTTP/1.1 Connect on Kubernetes (COMBOS). Assertions hold for a real API server: its
garbage collector and the informer cache act some time after a write returns, so tests
wait for those effects instead of assuming them.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from actions_harness import (
    DOMAIN,
    ORG,
    PROJECT,
    Env,
    StreamEnded,
    WriteDuringList,
    aid,
    assert_no_leaked_threads,
    bool_literal,
    condition_req,
    int_literal,
    next_update,
    open_env,
    read_snapshot,
    string_literal,
    task_req,
    trace_req,
    update_req,
    wait_until,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.core.execution_pb2 import ExecutionError
from flyteidl2.core.tasks_pb2 import TaskTemplate
from flyteidl2.workflow.run_definition_pb2 import ConditionAction

from actions import naming
from actions.store._meta import MAX_OBJECT_BYTES
from actions.store.errors import Invalid, NotFound, OwnerTerminating, TooLarge
from connect_proto._errors import Code, RpcError

P = phase_pb2
MODES = ["direct", "wire", "wire-h2"]
# (backend, mode): the embedded store over every transport; the Kubernetes store directly
# and over the wire (Connect on HTTP/1.1; transports do not depend on the backend).
COMBOS = [("embedded", m) for m in MODES] + [("kubernetes", "direct"), ("kubernetes", "wire")]
COMBO_IDS = [f"{b}-{m}" for b, m in COMBOS]


@pytest.fixture(autouse=True, scope="module")
def _no_leaked_threads() -> Iterator[None]:
    """Emulators, informer threads and servers are all stopped by the end."""
    before = set(threading.enumerate())
    yield
    assert_no_leaked_threads(before)


@pytest.fixture(params=COMBOS, ids=COMBO_IDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    backend, mode = request.param
    async with open_env(mode, backend=backend) as e:
        yield e


def backend_modes() -> Any:
    return pytest.mark.parametrize(("backend", "mode"), COMBOS, ids=COMBO_IDS)


async def eventually_gone(env: Env, action_id: Any, seconds: float = 5) -> None:
    """The object is gone from the store's freshest view (the informer cache follows
    the API server's watch, so it may lag the delete by a moment)."""
    name = naming.object_name(action_id)
    with trio.fail_after(seconds):
        while await env.store.latest(name) is not None:  # noqa: ASYNC110 - a cache, no event
            await trio.sleep(0.01)


def watch_req(action_id: Any) -> pb.WatchForUpdatesRequest:
    return pb.WatchForUpdatesRequest(parent_action_id=action_id)


async def expect_code(code: Code, coro: Any) -> RpcError:
    with pytest.raises(RpcError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def root_and_child(env: Env, run: str = "r1") -> tuple[Any, Any]:
    root, child = aid("a0", run), aid("c1", run)
    await env.client.enqueue(task_req(root))
    await env.client.enqueue(task_req(child, parent="a0"))
    return root, child


async def snapshot_of(env: Env, parent: Any) -> dict[str, Any]:
    async with env.client.watch(watch_req(parent)) as stream:
        with trio.fail_after(5):
            return await read_snapshot(stream)


async def obj_of(env: Env, action_id: Any) -> dict[str, Any]:
    return await env.store.get(naming.object_name(action_id))


# -- Enqueue ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.action.ClearField("input_uri"), "action.input_uri"),
        (lambda r: r.action.ClearField("run_output_base"), "action.run_output_base"),
        (lambda r: r.action.action_id.run.ClearField("name"), "action.action_id.run.name"),
        (lambda r: setattr(r.action.action_id, "name", "x" * 31), "action.action_id.name"),
        (lambda r: r.action.ClearField("task"), "action.spec"),
        (lambda r: r.ClearField("action"), "action"),
    ],
)
async def test_enqueue_invalid_request_names_the_field(env: Env, mutate: Any, field: str) -> None:
    req = task_req(aid("a0"))
    mutate(req)
    err = await expect_code(Code.INVALID_ARGUMENT, env.client.enqueue(req))
    assert field in err.message


def with_notification_rule(req: pb.EnqueueRequest, *phases: int) -> pb.EnqueueRequest:
    rule = req.run_spec.notification_rules.rules.add(delivery_config_name="email")
    rule.on_phases.extend(phases)
    return req


async def test_enqueue_notification_rules_are_checked_never_internal(env: Env) -> None:
    # protovalidate cannot evaluate the IDL's paused_rule_exclusive rule (an enum constant
    # in CEL): with two or more phases it used to fail the call with INTERNAL.
    ok = with_notification_rule(
        task_req(aid("a0")), P.ACTION_PHASE_SUCCEEDED, P.ACTION_PHASE_FAILED
    )
    await env.client.enqueue(ok)
    field = "run_spec.notification_rules.rules[0].on_phases"
    for n, phases in enumerate(
        [
            (P.ACTION_PHASE_PAUSED, P.ACTION_PHASE_FAILED),
            (P.ACTION_PHASE_FAILED, P.ACTION_PHASE_FAILED),
            (),
        ]
    ):
        bad = with_notification_rule(task_req(aid(f"b{n}")), *phases)
        err = await expect_code(Code.INVALID_ARGUMENT, env.client.enqueue(bad))
        assert field in err.message
    paused = with_notification_rule(task_req(aid("a1")), P.ACTION_PHASE_PAUSED)
    await env.client.enqueue(paused)


async def test_enqueue_trace_time_out_of_range_is_invalid_and_stores_nothing(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    for field in ("start_time", "end_time"):
        bad = trace_req(aid("t1"), "a0", **{field: {"seconds": 253_402_300_800}})
        err = await expect_code(Code.INVALID_ARGUMENT, env.client.enqueue(bad))
        assert f"action.trace.{field}" in err.message
    assert await env.store.latest(naming.object_name(aid("t1"))) is None
    await env.client.enqueue(trace_req(aid("t1"), "a0"))  # not "already exists"


async def test_identifiers_with_control_characters_are_invalid_on_every_rpc(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    calls = [
        (env.client.enqueue(task_req(aid("a\n"))), "action.action_id.name"),
        (env.client.enqueue(task_req(aid("a1", run="r\n"))), "action.action_id.run.name"),
        (env.client.enqueue(task_req(aid("a1", org="o\n"))), "action.action_id.run.org"),
        (env.client.enqueue(task_req(aid("c1"), parent="a0\n")), "action.parent_action_name"),
        (env.client.update(update_req(aid("a0\n"), P.ACTION_PHASE_RUNNING)), "action_id.name"),
        (env.client.abort(pb.AbortRequest(action_id=aid("a0", project="p\n"))), "run.project"),
        (
            env.client.signal(
                pb.SignalRequest(
                    action_id=aid("c1"), parent_action_name="a0\r", value=bool_literal(True)
                )
            ),
            "parent_action_name",
        ),
    ]
    for call, field in calls:
        err = await expect_code(Code.INVALID_ARGUMENT, call)
        assert field in err.message
    async with env.client.watch(watch_req(aid("a0", domain="d\n"))) as stream:
        with trio.fail_after(5):
            err = await expect_code(Code.INVALID_ARGUMENT, stream.next())
    assert "parent_action_id.run.domain" in err.message
    children, _ = await env.store.list({})
    assert [c["spec"]["actionName"] for c in children] == ["a0"]


async def test_enqueue_task_is_queued_before_enqueue_returns(env: Env) -> None:
    root, child = await root_and_child(env)
    snap = await snapshot_of(env, root)
    assert snap["a0"].phase == P.ACTION_PHASE_QUEUED
    assert snap["c1"].phase == P.ACTION_PHASE_QUEUED
    status = (await obj_of(env, child))["status"]
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Queued")


async def test_enqueue_task_object_shape(env: Env) -> None:
    root, child = await root_and_child(env)
    parent_obj = await obj_of(env, root)
    obj = await obj_of(env, child)
    assert obj["apiVersion"] == "flyte.org/v1" and obj["kind"] == "TaskAction"
    assert obj["metadata"]["namespace"] == "flyte"
    assert obj["metadata"]["name"] == naming.object_name(child)
    assert obj["metadata"]["annotations"]["flyte.org/org"] == ORG
    assert obj["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "flyte.org/v1",
            "kind": "TaskAction",
            "name": parent_obj["metadata"]["name"],
            "uid": parent_obj["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
    ]
    labels = obj["metadata"]["labels"]
    assert labels["flyte.org/project"] == PROJECT
    assert labels["flyte.org/domain"] == DOMAIN
    assert labels["flyte.org/run"] == "r1"
    assert labels["flyte.org/action"] == "c1"
    assert labels["flyte.org/action-type"] == "task"
    assert labels["flyte.org/is-root"] == "false"
    assert labels["flyte.org/parent"] == "a0"
    assert parent_obj["metadata"]["labels"]["flyte.org/is-root"] == "true"
    assert "ownerReferences" not in parent_obj["metadata"]
    spec = obj["spec"]
    assert spec["project"] == PROJECT and spec["domain"] == DOMAIN
    assert spec["runName"] == "r1" and spec["actionName"] == "c1"
    assert spec["parentActionName"] == "a0"
    assert spec["actionType"] == "task"
    assert spec["inputUri"] == "s3://bucket/in"
    assert spec["runOutputBase"] == "s3://bucket/org/p/d/run"
    assert spec["taskType"] == "python-task" and spec["shortName"] == "fn"
    assert spec["cacheKey"] == "ck"
    template = TaskTemplate.FromString(base64.b64decode(spec["taskTemplate"]))
    assert template.type == "python-task" and template.id.name == "mod.fn"


async def test_enqueue_run_settings_come_from_root_and_are_inherited(env: Env) -> None:
    root = aid("a0")
    run_spec = {"envs": {"values": [{"key": "A", "value": "1"}]}, "interruptible": {"value": True}}
    await env.client.enqueue(task_req(root, run_spec=run_spec))
    await env.client.enqueue(task_req(aid("c1"), parent="a0"))
    # A child's own run_spec is ignored: run-scoped settings are the root's.
    other = {"envs": {"values": [{"key": "B", "value": "2"}]}}
    await env.client.enqueue(task_req(aid("g1"), parent="c1", run_spec=other))
    for name in ("a0", "c1", "g1"):
        spec = (await obj_of(env, aid(name)))["spec"]
        assert spec["envVars"] == {"A": "1"}, name
        assert spec["interruptible"] is True, name


async def test_same_names_in_other_project_domain_or_org_do_not_collide(env: Env) -> None:
    ids = [
        aid("a0"),
        aid("a0", project="p2"),
        aid("a0", domain="production"),
        aid("a0", org="o2"),
    ]
    for i in ids:
        await env.client.enqueue(task_req(i))
    names = {naming.object_name(i) for i in ids}
    assert len(names) == 4
    for i in ids:
        assert (await obj_of(env, i))["spec"]["project"] == i.run.project


async def test_enqueue_condition_starts_paused(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    for simple in (types_pb2.BOOLEAN, types_pb2.INTEGER, types_pb2.FLOAT, types_pb2.STRING):
        name = f"k{simple}"
        await env.client.enqueue(condition_req(aid(name), "a0", simple))
    snap = await snapshot_of(env, root)
    assert {snap[f"k{s}"].phase for s in (1, 2, 3, 4)} == {P.ACTION_PHASE_PAUSED}
    obj = await obj_of(env, aid("k4"))
    assert obj["metadata"]["labels"]["flyte.org/action-type"] == "condition"
    cond = ConditionAction.FromString(base64.b64decode(obj["spec"]["conditionSpec"]))
    assert cond.type.simple == types_pb2.BOOLEAN


@pytest.mark.parametrize(
    "literal_type",
    [
        types_pb2.LiteralType(simple=types_pb2.DATETIME),
        types_pb2.LiteralType(simple=types_pb2.NONE),
        types_pb2.LiteralType(collection_type={"simple": types_pb2.BOOLEAN}),
        types_pb2.LiteralType(),
    ],
)
async def test_enqueue_condition_with_non_simple_type_is_invalid(
    env: Env, literal_type: types_pb2.LiteralType
) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    err = await expect_code(
        Code.INVALID_ARGUMENT,
        env.client.enqueue(condition_req(aid("k"), "a0", literal_type=literal_type)),
    )
    assert "action.condition.type" in err.message


async def test_enqueue_trace_is_stored_succeeded_and_in_a_later_snapshot(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    await env.client.enqueue(trace_req(aid("t1"), "a0"))
    snap = await snapshot_of(env, root)  # connects after the trace was recorded
    assert snap["t1"].phase == P.ACTION_PHASE_SUCCEEDED
    assert snap["t1"].output_uri == "s3://bucket/trace/out"
    # Never a TaskAction (the executor would run it): a TraceAction owned by the parent.
    with pytest.raises(NotFound):
        await env.store.get(naming.object_name(aid("t1")))
    listed, _ = await env.store.list(naming.children_selector(root))
    (obj,) = [o for o in listed if o["spec"]["actionName"] == "t1"]
    assert obj["kind"] == "TraceAction"
    assert obj["metadata"]["labels"]["flyte.org/action-type"] == "trace"
    parent = await obj_of(env, root)
    assert obj["metadata"]["ownerReferences"][0]["uid"] == parent["metadata"]["uid"]
    # Removed with its parent (ownerReference cascade).
    await env.client.abort(pb.AbortRequest(action_id=root, reason="done"))
    with trio.fail_after(10):
        while (await env.store.list(naming.children_selector(root)))[0]:  # noqa: ASYNC110 - polls the store
            await trio.sleep(0.05)


async def test_enqueue_child_of_missing_parent_is_not_found(env: Env) -> None:
    await expect_code(Code.NOT_FOUND, env.client.enqueue(task_req(aid("c1"), parent="nope")))
    with pytest.raises(Exception):  # noqa: B017 - nothing was created
        await obj_of(env, aid("c1"))


async def test_enqueue_same_action_again_is_already_exists_and_changes_nothing(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    await env.client.update(update_req(root, P.ACTION_PHASE_RUNNING))
    before = await obj_of(env, root)
    other = task_req(root)
    other.action.input_uri = "s3://elsewhere"
    await expect_code(Code.ALREADY_EXISTS, env.client.enqueue(other))
    assert await obj_of(env, root) == before


async def test_enqueue_too_large_to_store_is_invalid_argument_and_stores_nothing(
    env: Env,
) -> None:
    # ~2 MiB of template (2.7 MiB as base64 in the object): under the RPC limit, over
    # what etcd stores. Retrying cannot help, so not UNAVAILABLE.
    req = task_req(aid("a0"))
    req.action.task.spec.task_template.custom.update({"blob": "x" * (2 * 1024 * 1024)})
    err = await expect_code(Code.INVALID_ARGUMENT, env.client.enqueue(req))
    assert err.message.startswith("action too large to store: ")
    assert f"the limit is {MAX_OBJECT_BYTES} bytes" in err.message
    size = int(err.message.split(": ")[1].split()[0])
    assert size > 2 * 1024 * 1024
    assert await env.store.latest(naming.object_name(aid("a0"))) is None
    await expect_code(Code.NOT_FOUND, env.client.update(update_req(aid("a0"), 4)))
    await env.client.enqueue(task_req(aid("a0")))  # the same action, smaller, is fine


class _StatusTooLarge:
    """A store whose objects fit on create but not once the initial status is added
    (the status is padded past the limit on its way in; the real store refuses it)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create_with_status(self, obj: Any, status: Any) -> Any:
        # A field the CRD's schema keeps (an API server prunes unknown ones), without a
        # length limit of its own.
        first = {**status["phaseHistory"][0], "message": "x" * MAX_OBJECT_BYTES}
        padded = {**status, "phaseHistory": [first, *status["phaseHistory"][1:]]}
        return await self._inner.create_with_status(obj, padded)


@backend_modes()
async def test_enqueue_whose_status_does_not_fit_is_invalid_argument_and_removed(
    backend: str, mode: str
) -> None:
    async with open_env(mode, wrap_store=_StatusTooLarge, backend=backend) as env:
        err = await expect_code(Code.INVALID_ARGUMENT, env.client.enqueue(task_req(aid("a0"))))
        assert re.fullmatch(
            rf"action too large to store: \d+ bytes, the limit is {MAX_OBJECT_BYTES} bytes",
            err.message,
        )
        await eventually_gone(env, aid("a0"))


class _ParentBeingDeleted:
    """A store whose parent objects look like they are being deleted."""

    def __init__(self, inner: Any, mode: str) -> None:
        self._inner = inner
        self._mode = mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, name: str) -> Any:
        obj = await self._inner.get(name)
        if self._mode == "get" and name == naming.object_name(aid("a0")):
            obj["metadata"]["deletionTimestamp"] = "2026-11-27T00:00:00Z"
        return obj

    async def create_with_status(self, obj: Any, status: Any) -> Any:
        if self._mode == "create" and obj["metadata"].get("ownerReferences"):
            raise OwnerTerminating("owner is being deleted")
        return await self._inner.create_with_status(obj, status)


@backend_modes()
@pytest.mark.parametrize("where", ["get", "create"])
async def test_enqueue_child_of_parent_being_deleted_is_aborted(
    backend: str, mode: str, where: str
) -> None:
    wrap = lambda s: _ParentBeingDeleted(s, where)  # noqa: E731
    async with open_env(mode, wrap_store=wrap, backend=backend) as env:
        await env.client.enqueue(task_req(aid("a0")))
        await expect_code(Code.ABORTED, env.client.enqueue(task_req(aid("c1"), parent="a0")))


class _RefusesWrites:
    """A store that refuses every write as Invalid, as one that disagrees with the
    service's mapping would: a bug in the service, not in the request."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create_with_status(self, obj: Any, status: Any) -> Any:
        raise Invalid("metadata.labels: Invalid value")

    async def patch_annotations(self, name: str, annotations: Any) -> Any:
        raise Invalid("metadata.annotations: Too long")


@pytest.mark.parametrize("mode", ["direct", "wire"])
async def test_store_invalid_is_internal_and_logged(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_env(mode, wrap_store=_RefusesWrites) as env:
        err = await expect_code(Code.INTERNAL, env.client.enqueue(task_req(aid("a0"))))
        assert "Invalid value" not in err.message  # the store's words stay in the log
        assert "store rejected a request" in caplog.text
        await expect_code(Code.INTERNAL, env.client.abort(pb.AbortRequest(action_id=aid("a0"))))


# -- Update ----------------------------------------------------------------------------


async def test_update_unknown_action_is_not_found(env: Env) -> None:
    await expect_code(Code.NOT_FOUND, env.client.update(update_req(aid("zz"), 4)))


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (pb.UpdateRequest(action_id=aid("a0"), attempt=0, status={"attempts": 1}), "attempt"),
        (pb.UpdateRequest(action_id=aid("a0"), attempt=1), "status"),
        (pb.UpdateRequest(attempt=1, status={"attempts": 1}), "action_id"),
        (pb.UpdateRequest(action_id=aid("a0"), attempt=1, status={"attempts": 0}), "attempts"),
    ],
)
async def test_update_invalid_request(env: Env, req: pb.UpdateRequest, field: str) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    err = await expect_code(Code.INVALID_ARGUMENT, env.client.update(req))
    assert field in err.message


async def test_update_writes_phase_attempts_cache_and_times(env: Env) -> None:
    root, child = await root_and_child(env)
    req = update_req(
        child,
        P.ACTION_PHASE_RUNNING,
        attempt=2,
        attempts=2,
        cache_status=2,  # CACHE_HIT
        start_time={"seconds": 1_700_000_000},
        end_time={"seconds": 1_700_000_100},
    )
    await env.client.update(req)
    status = (await obj_of(env, child))["status"]
    assert status["attempts"] == 2
    assert status["cacheStatus"] == 2  # the enum number, as the executor's schema types it
    # Start and end time have no place in the executor's status (it would erase them).
    assert "startTime" not in status and "endTime" not in status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Executing")
    assert [h["phase"] for h in status["phaseHistory"]] == ["Queued", "Executing"]
    assert all(h["occurredAt"] for h in status["phaseHistory"])
    snap = await snapshot_of(env, root)
    assert snap["c1"].phase == P.ACTION_PHASE_RUNNING
    assert snap["c1"].output_uri.endswith("/org/p/d/run/c1/2")


async def test_update_with_out_of_range_time_is_invalid_argument(env: Env) -> None:
    _, child = await root_and_child(env)
    before = await obj_of(env, child)
    for field in ("start_time", "end_time"):
        req = update_req(child, P.ACTION_PHASE_RUNNING, **{field: {"seconds": 10**12}})
        err = await expect_code(Code.INVALID_ARGUMENT, env.client.update(req))
        assert f"status.{field}" in err.message
    assert await obj_of(env, child) == before


async def test_update_terminal_never_leaves_and_repeat_is_noop(env: Env) -> None:
    _, child = await root_and_child(env)
    await env.client.update(update_req(child, P.ACTION_PHASE_SUCCEEDED))
    before = await obj_of(env, child)
    await env.client.update(update_req(child, P.ACTION_PHASE_SUCCEEDED))  # no-op success
    await env.client.update(update_req(child, P.ACTION_PHASE_UNSPECIFIED))
    assert (await obj_of(env, child))["metadata"]["resourceVersion"] == before["metadata"][
        "resourceVersion"
    ]
    for phase in (P.ACTION_PHASE_RUNNING, P.ACTION_PHASE_FAILED, P.ACTION_PHASE_QUEUED):
        await expect_code(Code.FAILED_PRECONDITION, env.client.update(update_req(child, phase)))
    assert await obj_of(env, child) == before


async def test_update_from_superseded_attempt_is_failed_precondition(env: Env) -> None:
    _, child = await root_and_child(env)
    await env.client.update(update_req(child, P.ACTION_PHASE_RUNNING, attempt=3))
    await expect_code(
        Code.FAILED_PRECONDITION,
        env.client.update(update_req(child, P.ACTION_PHASE_FAILED, attempt=2, attempts=2)),
    )
    # the current attempt may still report
    await env.client.update(update_req(child, P.ACTION_PHASE_SUCCEEDED, attempt=3))


async def test_update_unspecified_phase_keeps_phase_updates_other_fields(env: Env) -> None:
    _, child = await root_and_child(env)
    await env.client.update(update_req(child, P.ACTION_PHASE_INITIALIZING))
    await env.client.update(
        update_req(child, P.ACTION_PHASE_UNSPECIFIED, attempt=2, attempts=2, cache_status=1)
    )
    status = (await obj_of(env, child))["status"]
    assert status["attempts"] == 2 and status["cacheStatus"] == 1  # CACHE_MISS
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "Initializing"


async def test_update_leaves_error_state_and_watch_reports_it_when_failed(env: Env) -> None:
    root, child = await root_and_child(env)
    # The executor writes errorState directly on the status.
    obj = await obj_of(env, child)
    obj["status"]["errorState"] = {"code": "OOM", "kind": "USER", "message": "out of memory"}
    await env.store.update_status(obj)
    await env.client.update(update_req(child, P.ACTION_PHASE_FAILED))
    status = (await obj_of(env, child))["status"]
    assert status["errorState"] == {"code": "OOM", "kind": "USER", "message": "out of memory"}
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] in (
        "PermanentFailure",
        "RetryableFailure",
    )
    snap = await snapshot_of(env, root)
    assert snap["c1"].phase == P.ACTION_PHASE_FAILED
    assert snap["c1"].error.code == "OOM"
    assert snap["c1"].error.message == "out of memory"
    assert snap["c1"].error.kind == ExecutionError.USER


class _ConflictOnce:
    """A store that fails the first status write of each name with Conflict, after
    applying a competing write, as a racing writer would."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seen: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def update_status(self, obj: Any) -> Any:
        from actions.store.errors import Conflict

        name = obj["metadata"]["name"]
        target = naming.object_name(aid("c1"))
        if name == target and name not in self.seen and obj["status"].get("cacheStatus"):
            self.seen.add(name)
            current = await self._inner.get(name)
            # A field the TaskAction schema keeps (an API server prunes unknown ones)
            # and that Update never writes: the executor's error state.
            current["status"]["errorState"] = {"code": "COMPETITOR", "kind": "SYSTEM"}
            await self._inner.update_status(current)
            raise Conflict("modified")
        return await self._inner.update_status(obj)


@backend_modes()
async def test_update_conflict_is_retried_on_fresh_read(backend: str, mode: str) -> None:
    async with open_env(mode, wrap_store=_ConflictOnce, backend=backend) as env:
        _, child = await root_and_child(env)
        await env.client.update(update_req(child, P.ACTION_PHASE_RUNNING, cache_status=1))
        status = (await obj_of(env, child))["status"]
        assert status["errorState"]["code"] == "COMPETITOR"  # the competing write is kept
        assert status["cacheStatus"] == 1  # and so is ours (CACHE_MISS)


async def test_concurrent_updates_are_not_lost(env: Env) -> None:
    _, child = await root_and_child(env)
    phases = [P.ACTION_PHASE_INITIALIZING, P.ACTION_PHASE_RUNNING] * 5

    async with trio.open_nursery() as nursery:
        for i, phase in enumerate(phases):
            nursery.start_soon(
                env.client.update, update_req(child, phase, start_time={"seconds": i + 1})
            )
    status = (await obj_of(env, child))["status"]
    assert status["attempts"] == 1
    assert len(status["phaseHistory"]) >= 2


# -- Abort -----------------------------------------------------------------------------


async def test_abort_unknown_is_not_found(env: Env) -> None:
    await expect_code(Code.NOT_FOUND, env.client.abort(pb.AbortRequest(action_id=aid("zz"))))


async def test_abort_writes_reason_and_caller_then_deletes_descendants(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actions.service")
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    await env.client.enqueue(task_req(aid("b1"), parent="a0"))
    await env.client.enqueue(task_req(aid("c1"), parent="b1"))
    await env.client.enqueue(task_req(aid("d1"), parent="c1"))
    deleted: dict[str, Any] = {}

    async def follow(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Any](100)
        async with trio.open_nursery() as n:
            await n.start(env.store.run_events, send)
            task_status.started()
            async for ev in receive:
                if ev.type == "DELETED":
                    deleted[ev.object["spec"]["actionName"]] = ev.object
                    if len(deleted) == 3:
                        n.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(follow)
        await env.client.abort(
            pb.AbortRequest(
                action_id=aid("b1"),
                reason="user asked",
                aborted_by={"user": {"spec": {"email": "x@y"}}},
            )
        )
        await wait_until(lambda: len(deleted) >= 3)
    assert set(deleted) == {"b1", "c1", "d1"}
    annotations = deleted["b1"]["metadata"]["annotations"]
    assert annotations["flyte.org/abort-reason"] == "user asked"
    assert "x@y" in annotations["flyte.org/aborted-by"]
    for name in ("b1", "c1", "d1"):
        assert await env.store.latest(naming.object_name(aid(name))) is None
    assert await env.store.latest(naming.object_name(root)) is not None
    if env.mode == "direct":
        assert "user asked" in caplog.text


async def test_abort_reports_aborted_unless_already_terminal(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    await env.client.enqueue(task_req(aid("b1"), parent="a0"))
    await env.client.enqueue(task_req(aid("c1"), parent="b1"))  # running
    await env.client.enqueue(task_req(aid("c2"), parent="b1"))  # succeeded
    await env.client.update(update_req(aid("c1"), P.ACTION_PHASE_RUNNING))
    await env.client.update(update_req(aid("c2"), P.ACTION_PHASE_SUCCEEDED))
    async with (
        env.client.watch(watch_req(root)) as top,
        env.client.watch(watch_req(aid("b1"))) as mid,
    ):
        with trio.fail_after(5):
            await read_snapshot(top)
            snap = await read_snapshot(mid)
        assert snap["c2"].phase == P.ACTION_PHASE_SUCCEEDED
        await env.client.abort(pb.AbortRequest(action_id=aid("b1"), reason="stop"))
        # b1 itself goes to its parent's watchers as ABORTED
        seen_top: list[int] = []
        while not seen_top or seen_top[-1] != P.ACTION_PHASE_ABORTED:
            u = await next_update(top)
            assert u.action_id.name == "b1"
            seen_top.append(u.phase)
        # the watch on the deleted b1 stays open and gets its children's fate
        final: dict[str, int] = {}
        while final.get("c1") != P.ACTION_PHASE_ABORTED or "c2" not in final:
            u = await next_update(mid)
            final[u.action_id.name] = u.phase
            assert not (u.action_id.name == "c2" and u.phase == P.ACTION_PHASE_ABORTED)
        assert final["c2"] == P.ACTION_PHASE_SUCCEEDED


async def test_abort_with_huge_reason_still_aborts(env: Env) -> None:
    _, child = await root_and_child(env)
    await env.client.abort(pb.AbortRequest(action_id=child, reason="x" * 300_000))
    await eventually_gone(env, child)


class _NoRoomForAnnotations:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def patch_annotations(self, name: str, annotations: Any) -> Any:
        await self._inner.get(name)  # NotFound as before
        raise TooLarge("too large", limit=MAX_OBJECT_BYTES)


@backend_modes()
async def test_abort_of_action_with_no_room_for_the_reason_still_aborts(
    backend: str, mode: str
) -> None:
    async with open_env(mode, wrap_store=_NoRoomForAnnotations, backend=backend) as env:
        _, child = await root_and_child(env)
        await env.client.abort(pb.AbortRequest(action_id=child, reason="why"))
        await eventually_gone(env, child)


async def test_abort_terminal_action_still_deletes_and_succeeds(env: Env) -> None:
    _, child = await root_and_child(env)
    await env.client.update(update_req(child, P.ACTION_PHASE_FAILED))
    await env.client.abort(pb.AbortRequest(action_id=child))
    await eventually_gone(env, child)
    await expect_code(Code.NOT_FOUND, env.client.abort(pb.AbortRequest(action_id=child)))


# -- Signal ----------------------------------------------------------------------------


async def _with_condition(env: Env, simple: int = types_pb2.BOOLEAN) -> Any:
    await env.client.enqueue(task_req(aid("a0")))
    await env.client.enqueue(condition_req(aid("k1"), "a0", simple))
    return aid("k1")


def sig(action_id: Any, value: literals_pb2.Literal, parent: str = "a0") -> pb.SignalRequest:
    return pb.SignalRequest(
        action_id=action_id,
        parent_action_name=parent,
        value=value,
        signalled_by={"user": {"id": {"subject": "ops"}, "spec": {"email": "ops@x"}}},
    )


async def test_signal_unknown_is_not_found(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    await expect_code(Code.NOT_FOUND, env.client.signal(sig(aid("zz"), bool_literal(True))))


async def test_signal_invalid_request(env: Env) -> None:
    k = await _with_condition(env)
    err = await expect_code(
        Code.INVALID_ARGUMENT,
        env.client.signal(pb.SignalRequest(action_id=k, value=bool_literal(True))),
    )
    assert "parent_action_name" in err.message


async def test_signal_on_task_is_failed_precondition(env: Env) -> None:
    _, child = await root_and_child(env)
    await expect_code(Code.FAILED_PRECONDITION, env.client.signal(sig(child, bool_literal(True))))


@pytest.mark.parametrize(
    "value",
    [
        literals_pb2.Literal(scalar={"none_type": {}}),
        literals_pb2.Literal(scalar={"primitive": {"datetime": {"seconds": 1}}}),
        literals_pb2.Literal(collection={"literals": [bool_literal(True)]}),
        literals_pb2.Literal(),
        int_literal(1),  # declared BOOLEAN
        string_literal("true"),
    ],
)
async def test_signal_value_not_concrete_or_wrong_type_is_invalid(
    env: Env, value: literals_pb2.Literal
) -> None:
    k = await _with_condition(env)
    err = await expect_code(Code.INVALID_ARGUMENT, env.client.signal(sig(k, value)))
    assert "value" in err.message


async def test_signal_success_stores_value_and_watchers_see_it(env: Env) -> None:
    k = await _with_condition(env, types_pb2.INTEGER)
    async with env.client.watch(watch_req(aid("a0"))) as stream:
        with trio.fail_after(5):
            snap = await read_snapshot(stream)
        assert snap["k1"].phase == P.ACTION_PHASE_PAUSED
        await env.client.signal(sig(k, int_literal(42)))
        u = await next_update(stream)
        while u.phase != P.ACTION_PHASE_SUCCEEDED:
            u = await next_update(stream)
        assert u.action_id.name == "k1"
        assert u.value.scalar.primitive.integer == 42
    status = (await obj_of(env, k))["status"]
    # Where Flyte's executor looks: signalValue, signalledBy (the subject), signalledAt.
    assert (
        literals_pb2.Literal.FromString(
            base64.b64decode(status["signalValue"])
        ).scalar.primitive.integer
        == 42
    )
    assert status["signalledBy"] == "ops"
    assert status["signalledAt"]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "Signaled")
    assert status["phaseHistory"][-1]["phase"] == "Signaled"
    snap = await snapshot_of(env, aid("a0"))
    assert snap["k1"].value.scalar.primitive.integer == 42


async def test_signal_again_same_value_is_noop_other_value_is_failed_precondition(
    env: Env,
) -> None:
    k = await _with_condition(env, types_pb2.STRING)
    await env.client.signal(sig(k, string_literal("yes")))
    before = await obj_of(env, k)
    await env.client.signal(sig(k, string_literal("yes")))
    assert await obj_of(env, k) == before
    await expect_code(Code.FAILED_PRECONDITION, env.client.signal(sig(k, string_literal("no"))))


async def test_signal_terminal_condition_is_failed_precondition(env: Env) -> None:
    k = await _with_condition(env)
    await env.client.update(update_req(k, P.ACTION_PHASE_TIMED_OUT))
    await expect_code(Code.FAILED_PRECONDITION, env.client.signal(sig(k, bool_literal(True))))


async def test_signal_with_wrong_parent_is_not_found(env: Env) -> None:
    k = await _with_condition(env)
    await expect_code(Code.NOT_FOUND, env.client.signal(sig(k, bool_literal(True), parent="b")))


# -- WatchForUpdates -------------------------------------------------------------------


async def test_watch_without_filter_is_invalid(env: Env) -> None:
    async with env.client.watch(pb.WatchForUpdatesRequest()) as stream:
        with trio.fail_after(5):
            err = await expect_code(Code.INVALID_ARGUMENT, stream.next())
    assert "filter" in err.message


async def test_watch_with_invalid_parent_id_is_invalid(env: Env) -> None:
    bad = aid("a0")
    bad.run.ClearField("project")
    async with env.client.watch(watch_req(bad)) as stream:
        with trio.fail_after(5):
            err = await expect_code(Code.INVALID_ARGUMENT, stream.next())
    assert "parent_action_id.run.project" in err.message


async def test_watch_snapshot_is_parent_and_direct_children_then_sentinel(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root))
    for c in ("c1", "c2", "c3"):
        await env.client.enqueue(task_req(aid(c), parent="a0"))
    await env.client.enqueue(task_req(aid("g1"), parent="c1"))  # grandchild: not included
    async with env.client.watch(watch_req(root)) as stream:
        with trio.fail_after(5):
            messages = []
            while True:
                m = await stream.next()
                messages.append(m)
                if m.HasField("control_message"):
                    break
    assert messages[-1].control_message.sentinel is True
    names = sorted(m.action_update.action_id.name for m in messages[:-1])
    assert names == ["a0", "c1", "c2", "c3"]


async def test_a_watch_does_not_hold_its_snapshot_while_it_waits_for_changes() -> None:
    # Every watcher of a parent with many children kept its whole snapshot for its life.
    async with open_env("direct") as env:
        await env.client.enqueue(task_req(aid("a0")))
        for n in range(20):
            await env.client.enqueue(task_req(aid(f"c{n}"), parent="a0"))
        batches: list[list[Any]] = []

        class Send:
            async def __call__(self, message: Any) -> None:
                batches.append([message])

            async def many(self, messages: list[Any]) -> None:
                batches.append(messages)

        ctx = env.client._ctx("WatchForUpdates")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.service.watch_for_updates, watch_req(aid("a0")), ctx, Send())
            await trio.testing.wait_all_tasks_blocked()
            (snapshot,) = batches
            assert len(snapshot) == 22  # the parent, 20 children, the sentinel
            # Held by ``batches``, this name and getrefcount's argument: not by the handler.
            assert sys.getrefcount(snapshot) == 3
            nursery.cancel_scope.cancel()


async def test_watch_missing_parent_gets_empty_snapshot_and_stays_open(env: Env) -> None:
    async with env.client.watch(watch_req(aid("ghost"))) as stream:
        with trio.fail_after(5):
            assert await read_snapshot(stream) == {}
        with trio.move_on_after(0.2) as scope:
            await stream.next()
        assert scope.cancelled_caught  # still open, nothing sent


async def test_watch_live_updates_only_for_direct_children(env: Env) -> None:
    root, child = await root_and_child(env)
    await env.client.enqueue(task_req(aid("g1"), parent="c1"))
    async with env.client.watch(watch_req(root)) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        await env.client.update(update_req(aid("g1"), P.ACTION_PHASE_RUNNING))  # grandchild
        await env.client.update(update_req(root, P.ACTION_PHASE_RUNNING))  # the parent itself
        await env.client.enqueue(task_req(aid("c2"), parent="a0"))
        await env.client.update(update_req(child, P.ACTION_PHASE_RUNNING))
        seen: list[tuple[str, int]] = []
        while ("c1", P.ACTION_PHASE_RUNNING) not in seen:
            u = await next_update(stream)
            seen.append((u.action_id.name, u.phase))
        assert {n for n, _ in seen} <= {"c1", "c2"}
        assert ("c2", P.ACTION_PHASE_QUEUED) in seen


async def test_watch_on_deleted_parent_stays_open(env: Env) -> None:
    _, child = await root_and_child(env)
    async with env.client.watch(watch_req(child)) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        await env.client.abort(pb.AbortRequest(action_id=child))
        with trio.move_on_after(0.3) as scope:
            await stream.next()
        assert scope.cancelled_caught


async def test_watch_scope_is_whole_run_identity(env: Env) -> None:
    variants = [
        {},
        {"project": "p2"},
        {"domain": "production"},
        {"org": "o2"},
    ]
    for v in variants:
        await env.client.enqueue(task_req(aid("a0", **v)))
        await env.client.enqueue(task_req(aid("c1", **v), parent="a0"))
    async with env.client.watch(watch_req(aid("a0"))) as stream:
        with trio.fail_after(5):
            snap = await read_snapshot(stream)
        assert {u.action_id.run.project for u in snap.values()} == {PROJECT}
        for v in variants[1:]:
            await env.client.update(update_req(aid("c1", **v), P.ACTION_PHASE_RUNNING))
            await env.client.enqueue(task_req(aid("c9", **v), parent="a0"))
        await env.client.update(update_req(aid("c1"), P.ACTION_PHASE_SUCCEEDED))
        while True:
            u = await next_update(stream)
            assert (u.action_id.run.org, u.action_id.run.project, u.action_id.run.domain) == (
                ORG,
                PROJECT,
                DOMAIN,
            )
            assert u.action_id.name != "c9"
            if u.phase == P.ACTION_PHASE_SUCCEEDED:
                break


async def test_watch_update_fields_and_output_uri(env: Env) -> None:
    root, child = await root_and_child(env)
    snap = await snapshot_of(env, root)
    u = snap["c1"]
    assert u.action_id == child
    name = naming.object_name(child)
    shard = naming.output_shard("flyte", name)
    assert u.output_uri == f"s3://bucket/{shard}/org/p/d/run/c1/1"  # attempt 1 when none
    assert not u.HasField("error") and not u.HasField("value")


async def test_watch_order_per_action_and_latest_arrives(env: Env) -> None:
    root, child = await root_and_child(env)
    sequence = [
        P.ACTION_PHASE_WAITING_FOR_RESOURCES,
        P.ACTION_PHASE_INITIALIZING,
        P.ACTION_PHASE_RUNNING,
        P.ACTION_PHASE_SUCCEEDED,
    ]
    order = [P.ACTION_PHASE_QUEUED, *sequence]
    async with env.client.watch(watch_req(root)) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        for phase in sequence:
            await env.client.update(update_req(child, phase))
        seen: list[int] = []
        while not seen or seen[-1] != P.ACTION_PHASE_SUCCEEDED:
            seen.append((await next_update(stream)).phase)
    positions = [order.index(p) for p in seen]
    assert positions == sorted(positions)  # merged maybe, never out of order


async def test_watch_client_leaving_releases_subscription(env: Env) -> None:
    if env.mode == "wire-h2":
        pytest.skip(
            "httpcore 1.0 sends no RST_STREAM when a response is closed early, so the "
            "server cannot see this client leave; test_actions_grpc_interop covers h2 cancel"
        )
    root, _ = await root_and_child(env)
    for _ in range(3):
        async with env.client.watch(watch_req(root)) as stream:
            with trio.fail_after(5):
                await read_snapshot(stream)
            assert env.fanout.subscriber_count() >= 1
    await wait_until(lambda: env.fanout.registry_size() == 0)


@pytest.mark.parametrize("backend", ["embedded", "kubernetes"])
async def test_watch_change_between_subscribe_and_snapshot_is_not_missed(backend: str) -> None:
    """docs/contract.md, WatchForUpdates 2: a write landing after the snapshot list was
    read (but before it is sent) still reaches the stream."""

    holder: dict[str, WriteDuringList] = {}

    def wrap(store: Any) -> WriteDuringList:
        holder["w"] = WriteDuringList(store)
        return holder["w"]

    for mode in [m for b, m in COMBOS if b == backend]:
        async with open_env(mode, wrap_store=wrap, backend=backend) as env:
            root, _ = await root_and_child(env)
            holder["w"].armed = True
            async with env.client.watch(watch_req(root)) as stream:
                with trio.fail_after(5):
                    snap = await read_snapshot(stream)
                assert snap["c1"].phase == P.ACTION_PHASE_QUEUED
                u = await next_update(stream)
                assert (u.action_id.name, u.phase) == ("c1", P.ACTION_PHASE_RUNNING)


async def test_watch_stream_ends_with_unavailable_on_shutdown(env: Env) -> None:
    root, _ = await root_and_child(env)
    async with env.client.watch(watch_req(root)) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        env.fanout.shutdown()
        with trio.fail_after(5):
            with pytest.raises((RpcError, StreamEnded)) as info:
                await stream.next()
    if isinstance(info.value, RpcError):
        assert info.value.code == Code.UNAVAILABLE


async def test_update_with_unknown_phase_is_invalid(env: Env) -> None:
    _, child = await root_and_child(env)
    err = await expect_code(Code.INVALID_ARGUMENT, env.client.update(update_req(child, 99)))
    assert "status.phase" in err.message


@pytest.mark.parametrize(
    ("backend", "mode"),
    [c for c in COMBOS if c[1] != "direct"],
    ids=[i for c, i in zip(COMBOS, COMBO_IDS, strict=True) if c[1] != "direct"],
)
async def test_watch_deadline_ends_stream_and_releases_subscription(
    backend: str, mode: str
) -> None:
    async with open_env(mode, backend=backend) as env:
        root, _ = await root_and_child(env)
        stream = env.client.client.server_stream(
            env.client.prefix + "WatchForUpdates",
            watch_req(root),
            pb.WatchForUpdatesResponse,
            timeout_ms=300,
        )
        got = []
        with trio.fail_after(5), pytest.raises(RpcError) as info:
            async for msg in stream:
                got.append(msg)
        await stream.aclose()
        assert info.value.code == Code.DEADLINE_EXCEEDED
        assert got[-1].control_message.sentinel
        await wait_until(lambda: env.fanout.registry_size() == 0)
