"""The service next to Flyte's executor: the objects it writes fit the executor's CRD, and
what the executor writes reaches watchers (docs/contract.md, "Identity and storage" and
"Phase on the object").

Each test runs on both backends. The Kubernetes one is the API emulator serving
``k8s/crd.yaml``: it prunes unknown fields and refuses wrong types as a real API server
does. For the embedded store (no API server in between), every stored object is checked
against the same schema with the emulator's schema module. The executor is played here:
it adds and removes its finalizer with a full-object update of only the fields its typed
struct knows, and replaces the whole status in its own vocabulary.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from actions_harness import (
    BACKENDS,
    Env,
    aid,
    condition_req,
    int_literal,
    next_update,
    open_env,
    read_snapshot,
    task_req,
    trace_req,
    update_req,
)
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.core.execution_pb2 import ExecutionError
from flyteidl2.core.tasks_pb2 import TaskTemplate
from kube_emulator.schema import process_custom_object

from actions import config as cfg
from actions import naming, objects
from actions.conditions import ConditionTimer
from actions.store.errors import Invalid
from connect_proto._errors import Code, RpcError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {
    doc["spec"]["names"]["kind"]: doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in yaml.safe_load_all((ROOT / "k8s" / "crd.yaml").read_text())
    if doc
}
FINALIZER = "flyte.org/plugin-finalizer"
NOW = "2026-12-01T00:00:00Z"


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    async with open_env("direct", backend=request.param) as e:
        yield e


def fits_schema(obj: dict[str, Any]) -> None:
    """Nothing an API server would prune, nothing it would refuse."""
    _, errors, dropped = process_custom_object(copy.deepcopy(obj), SCHEMAS[obj["kind"]])
    assert dropped == [], (obj["metadata"]["name"], dropped)
    assert errors == [], (obj["metadata"]["name"], errors)


async def everything(env: Env, parent: Any) -> dict[str, dict[str, Any]]:
    listed, _ = await env.store.list(naming.children_selector(parent))
    out = {o["spec"]["actionName"]: o for o in listed}
    out[parent.name] = await env.store.get(naming.object_name(parent))
    return out


def executor_view(obj: dict[str, Any]) -> dict[str, Any]:
    """What the executor's typed struct keeps of an object: metadata, and the spec and
    status fields of its schema (everything else is dropped at its next update)."""
    schema = SCHEMAS["TaskAction"]["properties"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": copy.deepcopy(obj["metadata"]),
        "spec": {k: v for k, v in obj["spec"].items() if k in schema["spec"]["properties"]},
        "status": {
            k: v
            for k, v in (obj.get("status") or {}).items()
            if k in schema["status"]["properties"]
        },
    }


def executor_status(reason: str, *, attempts: int = 3, **extra: Any) -> dict[str, Any]:
    """A whole status as the executor writes it for ``reason``."""
    terminal = {
        "Completed": "Succeeded",
        "Signaled": "Succeeded",
        "PermanentFailure": "Failed",
        "Aborted": "Failed",
        "TimedOut": "Failed",
        "InvalidSpec": "Failed",
    }
    conditions = [
        {
            "type": "Progressing",
            "status": "False" if reason in terminal else "True",
            "reason": reason,
            "message": "",
            "lastTransitionTime": NOW,
        }
    ]
    if reason in terminal:
        conditions.append(
            {
                "type": terminal[reason],
                "status": "True",
                "reason": reason,
                "message": "done",
                "lastTransitionTime": NOW,
            }
        )
    return {
        "stateJson": '{"phase": 4}',
        "pluginState": base64.b64encode(b"\x01gob").decode(),
        "pluginStateVersion": 1,
        "pluginPhase": reason,
        "pluginPhaseVersion": 2,
        "attempts": attempts,
        "systemFailures": 0,
        "cacheStatus": 1,  # CACHE_MISS, as the enum number
        "conditions": conditions,
        "phaseHistory": [
            {"phase": "Queued", "occurredAt": NOW},
            {"phase": reason, "occurredAt": NOW},
        ],
        **extra,
    }


async def write_status(env: Env, action_id: Any, status: dict[str, Any]) -> None:
    obj = await env.store.get(naming.object_name(action_id))
    await env.store.update_status({**executor_view(obj), "status": status})


async def full_object_update(env: Env, obj: dict[str, Any]) -> dict[str, Any]:
    """The executor's ``Update`` of the whole object (not only status)."""
    from kubernetes import client

    api = client.CustomObjectsApi(env.emulator.api_client())
    return api.replace_namespaced_custom_object(  # type: ignore[no-any-return]
        naming.GROUP, naming.VERSION, "flyte", "taskactions", obj["metadata"]["name"], obj
    )


def run_spec() -> dict[str, Any]:
    return {
        "labels": {"values": {"team": "ml", "flyte.org/action": "not-mine"}},
        "annotations": {"values": {"example.com/owner": "ana"}},
        "envs": {"values": [{"key": "A", "value": "1"}]},
        "interruptible": {"value": True},
        "run_start_time": {"seconds": 1_700_000_000},
    }


def with_args(req: pb.EnqueueRequest, *args: str) -> pb.EnqueueRequest:
    req.action.task.spec.task_template.container.args.extend(args)
    return req


# -- what the service writes ------------------------------------------------------------


async def test_every_object_the_service_writes_fits_the_executors_schema(env: Env) -> None:
    root = aid("a0")
    await env.client.enqueue(task_req(root, run_spec=run_spec()))
    await env.client.enqueue(task_req(aid("c1"), parent="a0"))
    await env.client.enqueue(condition_req(aid("k1"), "a0", types_pb2.INTEGER))
    await env.client.enqueue(trace_req(aid("t1"), "a0"))
    await env.client.update(
        update_req(aid("c1"), P.ACTION_PHASE_RUNNING, attempt=2, attempts=2, cache_status=2)
    )
    await env.client.signal(
        pb.SignalRequest(
            action_id=aid("k1"),
            parent_action_name="a0",
            value=int_literal(3),
            signalled_by={"user": {"id": {"subject": "ops"}}},
        )
    )
    await env.client.update(
        update_req(aid("c1"), P.ACTION_PHASE_FAILED, attempt=2, attempts=2, cache_status=2)
    )
    stored = await everything(env, root)
    assert sorted(stored) == ["a0", "c1", "k1", "t1"]
    for obj in stored.values():
        fits_schema(obj)
    assert stored["t1"]["kind"] == "TraceAction"
    assert {o["kind"] for n, o in stored.items() if n != "t1"} == {"TaskAction"}
    c1 = stored["c1"]["status"]
    assert c1["cacheStatus"] == 2 and c1["attempts"] == 2
    assert [h["phase"] for h in c1["phaseHistory"]] == ["Queued", "Executing", "PermanentFailure"]
    k1 = stored["k1"]["status"]
    assert k1["signalledBy"] == "ops"
    assert literals_pb2.Literal.FromString(base64.b64decode(k1["signalValue"])) == int_literal(3)
    assert k1["conditions"][-1]["reason"] == "Signaled"


async def test_run_spec_labels_and_annotations_reach_root_and_children(env: Env) -> None:
    await env.client.enqueue(
        with_args(task_req(aid("a0"), run_spec=run_spec()), "--t={{.runStartTime}}")
    )
    await env.client.enqueue(with_args(task_req(aid("c1"), parent="a0"), "{{.runStartTime}}", "x"))
    await env.client.enqueue(condition_req(aid("k1"), "a0"))
    stored = await everything(env, aid("a0"))
    root, child, cond = stored["a0"], stored["c1"], stored["k1"]
    for obj in (root, child):
        labels, annotations = obj["metadata"]["labels"], obj["metadata"]["annotations"]
        assert labels["team"] == "ml"
        assert annotations["example.com/owner"] == "ana"
        assert obj["spec"]["envVars"] == {"A": "1"} and obj["spec"]["interruptible"] is True
    # The service's own keys win over the run spec's.
    assert root["metadata"]["labels"]["flyte.org/action"] == "a0"
    assert child["metadata"]["labels"]["flyte.org/action"] == "c1"
    # Conditions inherit nothing.
    assert "team" not in cond["metadata"]["labels"]
    assert "example.com/owner" not in cond["metadata"].get("annotations", {})
    # {{.runStartTime}} is the run spec's run_start_time, in the root and in a child.
    start = "2023-11-14T22:13:20"
    root_args = list(
        TaskTemplate.FromString(base64.b64decode(root["spec"]["taskTemplate"])).container.args
    )
    child_args = list(
        TaskTemplate.FromString(base64.b64decode(child["spec"]["taskTemplate"])).container.args
    )
    assert root_args[0].startswith(f"--t={start}") and "{{" not in root_args[0]
    assert child_args[0].startswith(start) and child_args[1] == "x"


@pytest.mark.parametrize(
    ("field", "req"),
    [
        ("action.action_id.run.name", task_req(aid("a0", run="r" * 31))),
        ("action.action_id.name", task_req(aid("a" * 31))),
        ("action.action_id.run.project", task_req(aid("a0", project="p" * 64))),
        ("action.parent_action_name", task_req(aid("c1"), parent="p" * 31)),
        ("run_spec.labels", task_req(aid("a0"), run_spec={"labels": {"values": {"a b": "x"}}})),
        ("run_spec.labels", task_req(aid("a0"), run_spec={"labels": {"values": {"k": "a b"}}})),
        (
            "run_spec.annotations",
            task_req(aid("a0"), run_spec={"annotations": {"values": {"-bad": "x"}}}),
        ),
    ],
)
async def test_what_does_not_fit_the_schema_is_invalid_argument_naming_the_field(
    env: Env, field: str, req: pb.EnqueueRequest
) -> None:
    with pytest.raises(RpcError) as info:
        await env.client.enqueue(req)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert field in info.value.message
    assert await env.store.latest(naming.object_name(req.action.action_id)) is None


async def test_longest_names_are_accepted(env: Env) -> None:
    root = aid("a" * 30, run="r" * 30, project="p" * 63, domain="d" * 63)
    await env.client.enqueue(task_req(root))
    obj = await env.store.get(naming.object_name(root))
    assert len(obj["metadata"]["name"]) <= 52
    fits_schema(obj)


# -- what the executor writes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "phase"),
    [
        ("Queued", P.ACTION_PHASE_QUEUED),
        ("WaitingForResources", P.ACTION_PHASE_WAITING_FOR_RESOURCES),
        ("Initializing", P.ACTION_PHASE_INITIALIZING),
        ("Executing", P.ACTION_PHASE_RUNNING),
        ("RetryableFailure", P.ACTION_PHASE_RUNNING),
        ("Completed", P.ACTION_PHASE_SUCCEEDED),
        ("PermanentFailure", P.ACTION_PHASE_FAILED),
        ("InvalidSpec", P.ACTION_PHASE_FAILED),
        ("Aborted", P.ACTION_PHASE_ABORTED),
        ("TimedOut", P.ACTION_PHASE_TIMED_OUT),
    ],
)
async def test_watchers_read_the_executors_status(env: Env, reason: str, phase: int) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    await env.client.enqueue(task_req(aid("c1"), parent="a0"))
    error = {"code": "OOMKilled", "kind": "USER", "message": "out of memory"}
    async with env.client.watch(pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        await write_status(env, aid("c1"), executor_status(reason, errorState=error))
        update = await next_update(stream)
    assert update.phase == phase
    assert update.output_uri.endswith("/c1/3")  # status.attempts
    if phase == P.ACTION_PHASE_FAILED:
        assert (update.error.code, update.error.kind) == ("OOMKilled", ExecutionError.USER)
    stored = await env.store.get(naming.object_name(aid("c1")))
    fits_schema(stored)
    snap = await _snapshot(env)
    assert snap["c1"].phase == phase


async def _snapshot(env: Env) -> dict[str, Any]:
    async with env.client.watch(pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))) as stream:
        with trio.fail_after(5):
            return await read_snapshot(stream)


async def test_update_after_the_executor_keeps_its_status(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    await write_status(env, aid("a0"), executor_status("Executing", attempts=1))
    await env.client.update(update_req(aid("a0"), P.ACTION_PHASE_RUNNING, attempt=2, attempts=2))
    status = (await env.store.get(naming.object_name(aid("a0"))))["status"]
    assert status["attempts"] == 2
    assert status["pluginState"] and status["stateJson"] and status["pluginPhase"] == "Executing"
    assert status["cacheStatus"] == 0  # the update's own (CACHE_DISABLED)


async def test_executor_full_object_update_loses_nothing_the_service_needs(env: Env) -> None:
    if env.backend != "kubernetes":
        pytest.skip("an executor updates objects through an API server")
    await env.client.enqueue(task_req(aid("a0"), run_spec=run_spec()))
    await env.client.enqueue(task_req(aid("c1"), parent="a0"))
    await env.client.enqueue(trace_req(aid("t1"), "a0"))
    for action in ("a0", "c1"):
        obj = await env.store.get(naming.object_name(aid(action)))
        view = executor_view(obj)
        view["metadata"]["finalizers"] = [FINALIZER]
        added = await full_object_update(env, view)
        assert added["spec"] == obj["spec"]  # the spec holds nothing the executor drops
        await write_status(env, aid(action), executor_status("Executing"))
    before = await _snapshot(env)
    assert {n: u.phase for n, u in before.items()} == {
        "a0": P.ACTION_PHASE_RUNNING,
        "c1": P.ACTION_PHASE_RUNNING,
        "t1": P.ACTION_PHASE_SUCCEEDED,
    }
    assert before["c1"].action_id == aid("c1")  # org, project, domain, run intact
    # Finalizer removed the same way; the service still finds, updates and aborts it.
    obj = await env.store.get(naming.object_name(aid("c1")))
    view = executor_view(obj)
    view["metadata"]["finalizers"] = []
    await full_object_update(env, view)
    await env.client.update(update_req(aid("c1"), P.ACTION_PHASE_SUCCEEDED, attempt=3))
    assert (await _snapshot(env))["c1"].phase == P.ACTION_PHASE_SUCCEEDED
    await env.client.abort(pb.AbortRequest(action_id=aid("a0"), reason="done"))


async def test_api_server_prunes_unknown_fields_and_refuses_wrong_types(env: Env) -> None:
    if env.backend != "kubernetes":
        pytest.skip("the emulator is the API server")
    await env.client.enqueue(task_req(aid("a0")))
    obj = await env.store.get(naming.object_name(aid("a0")))
    # The old shape: a string cacheStatus is refused (422), as a real API server does.
    with pytest.raises(Invalid, match="cacheStatus"):
        await env.store.update_status({**obj, "status": {"cacheStatus": "CACHE_HIT"}})
    status = executor_status("Executing")
    status["signal"] = {"value": "AA=="}
    status["startTime"] = NOW
    status["conditions"][0]["extra"] = "nested"
    stored = await env.store.update_status({**obj, "status": status})
    assert "signal" not in stored["status"] and "startTime" not in stored["status"]
    assert "extra" not in stored["status"]["conditions"][0]


# -- conditions ----------------------------------------------------------------------------


def _condition_with_timeout(seconds: int) -> pb.EnqueueRequest:
    req = condition_req(aid("k1"), "a0", types_pb2.INTEGER)
    req.action.condition.timeout.seconds = seconds
    return req


async def test_with_flyte_executor_signal_writes_only_the_signal(env: Env) -> None:
    env.service.resolve_conditions = False  # actions.executor: flyte
    await env.client.enqueue(task_req(aid("a0")))
    await env.client.enqueue(condition_req(aid("k1"), "a0", types_pb2.INTEGER))
    signal = pb.SignalRequest(
        action_id=aid("k1"),
        parent_action_name="a0",
        value=int_literal(5),
        signalled_by={"user": {"id": {"subject": "ops"}}},
    )
    await env.client.signal(signal)
    status = (await env.store.get(naming.object_name(aid("k1"))))["status"]
    assert status["signalValue"] and status["signalledBy"] == "ops" and status["signalledAt"]
    assert (await _snapshot(env))["k1"].phase == P.ACTION_PHASE_PAUSED  # the executor's move
    await env.client.signal(signal)  # the same value again: no-op success
    # The executor flips it, keeping the signal fields it knows.
    await write_status(
        env,
        aid("k1"),
        executor_status(
            "Signaled",
            signalValue=status["signalValue"],
            signalledBy="ops",
            signalledAt=status["signalledAt"],
        ),
    )
    snap = await _snapshot(env)
    assert snap["k1"].phase == P.ACTION_PHASE_SUCCEEDED
    assert snap["k1"].value == int_literal(5)


async def test_where_no_executor_runs_an_unsignalled_condition_times_out(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    await env.client.enqueue(_condition_with_timeout(60))
    timer = ConditionTimer(env.store)
    assert await timer.tick() == 0  # not yet due
    later = datetime.now(UTC) + timedelta(seconds=61)
    async with env.client.watch(pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))) as stream:
        with trio.fail_after(5):
            await read_snapshot(stream)
        assert await timer.tick(later) == 1
        update = await next_update(stream)
    assert update.phase == P.ACTION_PHASE_TIMED_OUT
    stored = await env.store.get(naming.object_name(aid("k1")))
    fits_schema(stored)
    assert stored["status"]["errorState"]["code"] == "ConditionTimedOut"
    failed = next(c for c in stored["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TimedOut")
    assert await timer.tick(later) == 0  # terminal: left alone
    with pytest.raises(RpcError) as info:
        await env.client.signal(
            pb.SignalRequest(action_id=aid("k1"), parent_action_name="a0", value=int_literal(1))
        )
    assert info.value.code == Code.FAILED_PRECONDITION


async def test_a_signalled_condition_does_not_time_out(env: Env) -> None:
    await env.client.enqueue(task_req(aid("a0")))
    await env.client.enqueue(_condition_with_timeout(60))
    await env.client.signal(
        pb.SignalRequest(action_id=aid("k1"), parent_action_name="a0", value=int_literal(1))
    )
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert await ConditionTimer(env.store).tick(later) == 0
    assert (await _snapshot(env))["k1"].phase == P.ACTION_PHASE_SUCCEEDED


# -- configuration ---------------------------------------------------------------------


FLYTE_ACTIONS_SECTION = """
actions:
  server:
    host: 0.0.0.0
    port: 8091
  kubernetes:
    namespace: flyte
    kubeconfig: null
    qps: 1000
    burst: 2000
    timeout: 30s
    clusterName: flyte-sandbox
  watchBufferSize: 100
  watchWorkers: 10
  runServiceUrl: http://localhost:8090
  recordFilterSize: 8388608
"""


def test_a_flyte_deployments_actions_section_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "flyte.yaml"
    path.write_text(FLYTE_ACTIONS_SECTION)
    config = cfg.load(path)
    assert config.kube_qps == 1000 and config.kube_burst == 2000
    assert config.effective_request_timeout == 30.0
    assert config.run_service_url == "http://localhost:8090"
    assert config.ignored_keys() == ["actions.kubernetes.clusterName", "actions.recordFilterSize"]
    assert cfg.load(path) == cfg.read_file(path)  # and reads the same twice


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2", 2.0)]
)
def test_kubernetes_timeout_takes_go_durations(text: str, seconds: float) -> None:
    config = cfg.from_mapping({"actions": {"kubernetes": {"timeout": text}}})
    assert config.effective_request_timeout == seconds


def test_bad_timeout_and_run_service_url_name_the_key() -> None:
    with pytest.raises(cfg.ConfigError, match=r"actions\.kubernetes\.timeout"):
        cfg.from_mapping({"actions": {"kubernetes": {"timeout": "soon"}}})
    with pytest.raises(cfg.ConfigError, match=r"actions\.runServiceUrl"):
        cfg.from_mapping({"actions": {"runServiceUrl": "localhost:8090"}})


def test_executor_default_follows_the_store() -> None:
    assert cfg.Config(store="kubernetes").executor_runs
    assert not cfg.Config(store="embedded").executor_runs
    assert not cfg.Config(store="kubernetes", executor="none").executor_runs
    assert cfg.Config(store="embedded", executor="flyte").executor_runs
    with pytest.raises(cfg.ConfigError, match=r"actions\.executor"):
        cfg.from_mapping({"actions": {"executor": "argo"}})


def test_trace_is_never_a_task_action() -> None:
    parent = objects.new_object(task_req(aid("a0")), "flyte", None)
    parent["metadata"]["uid"] = "u"
    trace = objects.new_trace_object(trace_req(aid("t1"), "a0"), "flyte", parent)
    assert trace["kind"] == "TraceAction"
    fits_schema(trace)


def test_start_up_names_a_missing_trace_crd(tmp_path: Path) -> None:
    """Next to Flyte, its chart installs the TaskAction CRD; the TraceAction one is ours."""
    from kube_emulator import Emulator

    from actions.preflight import StartupError, check_kubernetes

    only_taskactions = tmp_path / "taskaction-crd.yaml"
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "crd.yaml").read_text()) if d]
    only_taskactions.write_text(yaml.safe_dump(docs[0]))
    with Emulator(crds=[only_taskactions], namespaces=["flyte"]) as emu:
        with pytest.raises(StartupError, match=r"CRD actiontraces\.flyte\.org is not installed"):
            check_kubernetes("emu", emu.api_client(), "flyte", (1, 5))
    with Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=["flyte"]) as emu:
        assert check_kubernetes("emu", emu.api_client(), "flyte", (1, 5)) is None


async def test_run_service_url_feeds_the_notifier_every_store_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``actions.runServiceUrl`` wires the run-service notifier to the fan-out: every
    store event reaches it (the run service itself is tested in test_run_service.py;
    here nothing answers, so the notifier only buffers and retries)."""
    from actions.app import build_app
    from actions.store.embedded import EmbeddedStore
    from connect_proto._server.serve import make_config
    from connect_proto._server.serve import serve as serve_asgi

    async def open_store(_: cfg.Config) -> Any:
        return await EmbeddedStore.open(None)

    caplog.set_level("INFO", logger="actions")
    config = cfg.Config(
        port=0, run_service_url="http://127.0.0.1:9", record_filter_size=1, kube_cluster_name="c"
    )
    application = build_app(config, open_store=open_store)
    assert application.service.resolve_conditions  # no executor next to an embedded store
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert [m.split(":")[0] for m in ignored] == [
        "actions.kubernetes.clusterName",
        "actions.recordFilterSize",
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_asgi, application.app, make_config("127.0.0.1", 0))
        with trio.fail_after(10):
            while application.service._store is None:  # noqa: ASYNC110 - the lifespan binds it
                await trio.sleep(0.01)
        notifier = application.notifier
        assert notifier is not None
        await application.service.enqueue(task_req(aid("a0")), None)  # type: ignore[arg-type]
        with trio.fail_after(10):
            while notifier.metrics.observed < 2:  # noqa: ASYNC110 - ADDED, then MODIFIED
                await trio.sleep(0.01)
        application.begin_shutdown()
        nursery.cancel_scope.cancel()


async def test_a_trace_reaches_the_watchers_of_every_replica() -> None:
    """Two replicas on one API server: a trace enqueued through one reaches a watcher of
    the other live (its TraceAction watch), and both snapshots."""
    from actions_harness import open_emulator

    async with (
        open_emulator() as emu,
        open_env("direct", backend="kubernetes", emulator=emu) as one,
        open_env("direct", backend="kubernetes", emulator=emu) as two,
    ):
        await one.client.enqueue(task_req(aid("a0")))
        request = pb.WatchForUpdatesRequest(parent_action_id=aid("a0"))
        async with two.client.watch(request) as stream:
            with trio.fail_after(5):
                await read_snapshot(stream)
            await one.client.enqueue(trace_req(aid("t1"), "a0"))
            update = await next_update(stream)
        assert (update.action_id.name, update.phase) == ("t1", P.ACTION_PHASE_SUCCEEDED)
        for env in (one, two):
            assert (await _snapshot(env))["t1"].output_uri == "s3://bucket/trace/out"


async def test_api_server_refuses_bytes_that_are_not_base64(env: Env) -> None:
    if env.backend != "kubernetes":
        pytest.skip("the emulator is the API server")
    await env.client.enqueue(task_req(aid("a0")))
    obj = await env.store.get(naming.object_name(aid("a0")))
    with pytest.raises(Invalid, match="pluginState"):
        await env.store.update_status({**obj, "status": {"pluginState": "not base64!"}})
