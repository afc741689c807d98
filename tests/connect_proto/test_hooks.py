"""Interceptors, observers, request ids, stream limits and the access log (in-process)."""

from __future__ import annotations

import io
import json
import logging
import math

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
import trio.lowlevel
from asgi_driver import call_app
from proto_calls import ALL, CONNECT_STREAM, GRPC, GRPC_WEB, SVC, Case, call, request_for
from testsvc.v1 import test_pb2
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._app.limits import StreamLimiter
from connect_proto._app.request_id import MAX_REQUEST_ID_LENGTH, valid_request_id
from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._extras.logs import AccessLog, JsonFormatter, configure_logging
from connect_proto._hooks import CallOutcome
from connect_proto._server.serve import make_config, serve
from connect_proto._service import RpcRoute
from connect_proto._wire.envelope import encode_envelope


class Recorder:
    """Interceptor and observer at once: records everything it is shown."""

    def __init__(self, refuse: RpcError | None = None) -> None:
        self.refuse = refuse
        self.intercepted: list[tuple[str, str, bool]] = []
        self.started: list[str] = []
        self.finished: list[tuple[str, str, CallOutcome]] = []
        self.bound: list[str] = []

    def bind(self, routes: dict[str, RpcRoute]) -> None:
        self.bound = sorted(routes)

    async def intercept(self, route: RpcRoute, ctx: RequestContext) -> None:
        self.intercepted.append((route.path, ctx.protocol, math.isfinite(ctx.deadline)))
        if self.refuse is not None:
            raise self.refuse

    def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
        self.started.append(route.method_name)

    def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
        self.finished.append((route.method_name, ctx.protocol, outcome))


# Interceptors ----------------------------------------------------------------------------------


async def test_interceptors_bound_once_and_run_in_order_with_the_deadline() -> None:
    order: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        async def intercept(self, route: RpcRoute, ctx: RequestContext) -> None:
            order.append(self.name)

    rec = Recorder()
    app = ConnectApp(
        [(TEST_SERVICE, TestServiceImpl())], interceptors=[Named("a"), rec, Named("b")]
    )
    assert f"{SVC}/Echo" in rec.bound
    status, _ = await call(
        app, GRPC, f"{SVC}/Echo", test_pb2.EchoRequest(), [("grpc-timeout", "5S")]
    )
    assert status.code is None
    assert order == ["a", "b"]
    assert rec.intercepted == [(f"{SVC}/Echo", "grpc", True)]


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_interceptor_refusal_in_each_protocol(case: Case) -> None:
    impl = TestServiceImpl()
    rec = Recorder(refuse=RpcError(Code.FAILED_PRECONDITION, "nope ☺"))
    app = ConnectApp([(TEST_SERVICE, impl)], interceptors=[rec])
    path, message = request_for(case)
    status, _ = await call(app, case, path, message)
    assert (status.code, status.message, status.messages) == (Code.FAILED_PRECONDITION, "nope ☺", 0)
    assert impl.started == []


def test_hooks_without_their_methods_fail_at_start_up() -> None:
    with pytest.raises(TypeError, match="intercept"):
        ConnectApp([(TEST_SERVICE, TestServiceImpl())], interceptors=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="call_started"):
        ConnectApp([(TEST_SERVICE, TestServiceImpl())], observers=[object()])  # type: ignore[list-item]


# Observers -------------------------------------------------------------------------------------


async def test_observer_sees_codes_counts_and_durations() -> None:
    rec = Recorder()
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())], observers=[rec])
    await call(app, GRPC, f"{SVC}/Echo", test_pb2.EchoRequest())
    await call(app, GRPC_WEB, f"{SVC}/Fail", test_pb2.FailRequest(code=5, message="x"))
    await call(app, CONNECT_STREAM, f"{SVC}/Count", test_pb2.CountRequest(count=3))
    await call_app(
        app,
        path=f"{SVC}/Sum",
        headers=GRPC.headers(),
        body=b"".join(
            encode_envelope(test_pb2.SumRequest(value=v).SerializeToString()) for v in (1, 2)
        ),
    )
    await call(app, GRPC, f"{SVC}/Sleep", test_pb2.SleepRequest(ms=1000), [("grpc-timeout", "10m")])
    await call_app(app, path="/nope", headers=GRPC.headers())  # 404: never observed
    assert rec.started == ["Echo", "Fail", "Count", "Sum", "Sleep"]
    summary = [
        (m, p, o.code_name, o.messages_received, o.messages_sent) for m, p, o in rec.finished
    ]
    assert summary == [
        ("Echo", "grpc", "ok", 1, 1),
        ("Fail", "grpc-web", "not_found", 1, 0),
        ("Count", "connect", "ok", 1, 3),
        ("Sum", "grpc", "ok", 2, 1),
        ("Sleep", "grpc", "deadline_exceeded", 1, 0),
    ]
    assert all(o.duration >= 0 for _, _, o in rec.finished)
    assert rec.finished[-1][2].duration >= 0.01


async def test_observer_reports_client_disconnect_as_canceled() -> None:
    rec = Recorder()
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())], observers=[rec])
    await call_app(
        app,
        path=f"{SVC}/Count",
        headers=GRPC.headers(),
        body=GRPC.body(test_pb2.CountRequest(count=100, delay_ms=1)),
        disconnect_after_bodies=2,
    )
    ((_, _, outcome),) = rec.finished
    assert outcome.code is Code.CANCELED
    assert outcome.messages_sent >= 2


async def test_failing_observer_does_not_fail_the_call(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def call_started(self, route: RpcRoute, ctx: RequestContext) -> None:
            raise ValueError("boom")

        def call_finished(self, route: RpcRoute, ctx: RequestContext, outcome: CallOutcome) -> None:
            raise ValueError("boom")

    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())], observers=[Broken()])
    status, _ = await call(app, GRPC, f"{SVC}/Echo", test_pb2.EchoRequest())
    assert status.code is None
    assert sum("observer" in r.getMessage() for r in caplog.records) == 2


# Request ids ----------------------------------------------------------------------------------


def test_request_id_validation() -> None:
    assert valid_request_id("abc-123_x.y:z/+=")
    assert valid_request_id("a" * MAX_REQUEST_ID_LENGTH)
    assert not valid_request_id("a" * (MAX_REQUEST_ID_LENGTH + 1))
    assert not valid_request_id("")
    assert not valid_request_id("has space")
    assert not valid_request_id("line\nbreak")
    assert not valid_request_id("caf\u00e9")


async def test_request_ids_off_by_default() -> None:
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    _, response = await call(app, GRPC, f"{SVC}/Echo", test_pb2.EchoRequest())
    assert response.header("x-request-id") is None


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_request_id_echoed_generated_or_replaced(case: Case) -> None:
    rec = Recorder()
    ids: list[str] = []

    class Capture:
        async def intercept(self, route: RpcRoute, ctx: RequestContext) -> None:
            ids.append(ctx.request_id)

    app = ConnectApp(
        [(TEST_SERVICE, TestServiceImpl())],
        request_id_header="X-Request-Id",
        interceptors=[Capture()],
        observers=[rec],
    )
    path, message = request_for(case)
    _, response = await call(app, case, path, message, [("x-request-id", "client-id-1")])
    assert response.header("x-request-id") == "client-id-1"
    _, response = await call(app, case, path, message)
    generated = response.header("x-request-id")
    assert generated is not None and len(generated) == 32 and int(generated, 16) >= 0
    _, response = await call(app, case, path, message, [("x-request-id", "bad id")])
    replaced = response.header("x-request-id")
    assert replaced not in (None, "bad id", generated)
    assert ids == ["client-id-1", generated, replaced]


async def test_request_id_on_error_responses() -> None:
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())], request_id_header="x-request-id")
    response = await call_app(
        app,
        path=f"{SVC}/Fail",
        headers=[("content-type", "application/json"), ("x-request-id", "r1")],
        body=b'{"code": 3}',
    )
    assert response.status == 400
    assert response.header("x-request-id") == "r1"


# Stream limits -------------------------------------------------------------------------------


async def _open_stream(app: ConnectApp, case: Case, results: list, **kw: object) -> None:
    status, _ = await call(
        app, case, f"{SVC}/Count", test_pb2.CountRequest(count=3, delay_ms=100), **kw
    )
    results.append(status)


@pytest.mark.parametrize("case", [CONNECT_STREAM, GRPC, GRPC_WEB], ids=lambda c: c.name)
async def test_max_streams_refuses_with_resource_exhausted(case: Case) -> None:
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())], max_streams=2)
    results: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_open_stream, app, case, results)
        nursery.start_soon(_open_stream, app, case, results)
        await trio.sleep(0.05)
        assert app.open_streams == 2
        status, _ = await call(app, case, f"{SVC}/Count", test_pb2.CountRequest(count=1))
        assert status.code is Code.RESOURCE_EXHAUSTED
        assert "too many open streams" in status.message and "2" in status.message
        # Unary calls are never counted.
        if case.unary_ok:
            status, _ = await call(app, case, f"{SVC}/Echo", test_pb2.EchoRequest())
            assert status.code is None
    assert [s.code for s in results] == [None, None]
    assert app.open_streams == 0
    status, _ = await call(app, case, f"{SVC}/Count", test_pb2.CountRequest(count=1))
    assert status.code is None


async def test_per_method_limit_and_release_on_disconnect() -> None:
    app = ConnectApp(
        [(TEST_SERVICE, TestServiceImpl())], max_streams_per_method={f"{SVC}/Count": 1}
    )
    results: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_open_stream, app, GRPC, results)
        await trio.sleep(0.05)
        status, _ = await call(app, GRPC, f"{SVC}/Count", test_pb2.CountRequest(count=1))
        assert status.code is Code.RESOURCE_EXHAUSTED
        assert f"{SVC}/Count" in status.message
    # A client that goes away releases its slot too.
    await call_app(
        app,
        path=f"{SVC}/Count",
        headers=GRPC.headers(),
        body=GRPC.body(test_pb2.CountRequest(count=50, delay_ms=1)),
        disconnect_after_bodies=1,
    )
    assert app.open_streams == 0


def test_limit_configuration_is_checked_at_start_up() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        ConnectApp([(TEST_SERVICE, TestServiceImpl())], max_streams_per_method={"/x/Y": 1})
    with pytest.raises(ValueError, match="does not stream"):
        ConnectApp([(TEST_SERVICE, TestServiceImpl())], max_streams_per_method={f"{SVC}/Echo": 1})
    with pytest.raises(ValueError):
        StreamLimiter(-1)


async def test_h2_max_concurrent_streams_is_advertised(nursery: trio.Nursery) -> None:
    app = ConnectApp([(TEST_SERVICE, TestServiceImpl())])
    port = await nursery.start(serve, app, make_config("127.0.0.1", 0, h2_max_concurrent_streams=7))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    advertised = None
    with trio.fail_after(5):
        while advertised is None:
            for event in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(
                        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                    )
                    if changed is not None:
                        advertised = changed.new_value
    assert advertised == 7
    await stream.aclose()
    nursery.cancel_scope.cancel()


# Logs -------------------------------------------------------------------------------------------


async def test_access_log_plain_and_json() -> None:
    buffer = io.StringIO()
    logger = logging.getLogger("test.access")
    logger.propagate = False
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        app = ConnectApp(
            [(TEST_SERVICE, TestServiceImpl())],
            observers=[AccessLog(logger)],
            request_id_header="x-request-id",
        )
        await call(
            app, GRPC, f"{SVC}/Fail", test_pb2.FailRequest(code=7), [("x-request-id", "r-9")]
        )
    finally:
        logger.removeHandler(handler)
    record = json.loads(buffer.getvalue())
    assert record["logger"] == "test.access"
    assert record["level"] == "INFO"
    assert record["method"] == f"{SVC}/Fail"
    assert record["protocol"] == "grpc"
    assert record["code"] == "permission_denied"
    assert record["request_id"] == "r-9"
    assert record["peer"] == "127.0.0.1"
    assert isinstance(record["duration_ms"], float)
    assert record["msg"].startswith(f"{SVC}/Fail grpc permission_denied ")
    assert "id=r-9" in record["msg"]


def test_configure_logging_formats() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        out = io.StringIO()
        configure_logging("json", "debug", stream=out)
        configure_logging("json", "DEBUG", stream=out)  # idempotent: one handler
        logging.getLogger("x.y").warning("hello %s", "world", extra={"k": 1})
        try:
            raise RuntimeError("bad")
        except RuntimeError:
            logging.getLogger("x.y").exception("failed")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert lines[0]["msg"] == "hello world" and lines[0]["k"] == 1
        assert lines[0]["level"] == "WARNING" and lines[0]["ts"].endswith("+00:00")
        assert "RuntimeError: bad" in lines[1]["exc"]
        assert len(lines) == 2
        plain = io.StringIO()
        configure_logging("plain", logging.INFO, stream=plain)
        logging.getLogger("x.y").info("plain line")
        assert plain.getvalue().rstrip().endswith("INFO x.y: plain line")
        assert out.getvalue().count("\n") == 2  # the json handler was replaced
        with pytest.raises(ValueError):
            configure_logging("xml")  # type: ignore[arg-type]
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])


# The lazy disconnect watcher of unary calls ----------------------------------------------------


async def test_await_watching_only_watches_handlers_that_block() -> None:
    from connect_proto._app.runner import await_watching

    watched: list[int] = []

    async def quick() -> str:
        return "done"

    async def slow() -> str:
        await trio.sleep(0.01)
        await trio.sleep(0.01)
        return "slept"

    async def slow_forever() -> None:
        await trio.sleep_forever()

    async def failing() -> None:
        await trio.lowlevel.checkpoint()
        raise RpcError(Code.ABORTED, "x")

    assert await await_watching(quick(), lambda: watched.append(1)) == "done"
    assert watched == []
    assert await await_watching(slow(), lambda: watched.append(2)) == "slept"
    assert watched == [2]
    with pytest.raises(RpcError):
        await await_watching(failing(), lambda: watched.append(3))
    with trio.move_on_after(0.01) as scope:  # Cancelled is thrown into the handler
        await await_watching(slow_forever(), lambda: None)
    assert scope.cancelled_caught


async def test_unary_handler_is_cancelled_when_the_client_goes_away() -> None:
    impl = TestServiceImpl()
    rec = Recorder()
    app = ConnectApp([(TEST_SERVICE, impl)], observers=[rec])
    body = GRPC.body(test_pb2.SleepRequest(ms=5000))
    delivered = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def send(event: dict) -> None:
        sent.append(event)

    scope = {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "path": f"{SVC}/Sleep",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in GRPC.headers()],
    }
    with trio.fail_after(2):
        await app(scope, receive, send)
    assert impl.cancelled == ["sleep"]
    assert sent == []  # nothing is written to a client that left
    assert rec.finished[0][2].code is Code.CANCELED
