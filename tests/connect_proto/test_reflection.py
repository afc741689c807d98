"""gRPC server reflection (connect_proto._extras.reflection): answers, and real clients over h2c.

The server runs in this process (trio), so blocking clients (grpcio, buf curl) run in
threads or subprocesses while it serves.
"""

from __future__ import annotations

import json
import queue
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import trio
from google.protobuf import descriptor_pb2
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from servers import require_buf
from testsvc_impl import TEST_SERVICE, TestServiceImpl

from connect_proto._app.app import ConnectApp
from connect_proto._extras.reflection import (
    V1_FILE,
    V1_SERVICE,
    V1ALPHA_SERVICE,
    ServerReflection,
    reflection_services,
)
from connect_proto._server.serve import make_config, serve

V1_PATH = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA_PATH = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
Request = v1alpha_pb2.ServerReflectionRequest


def _impls() -> tuple[ServerReflection, ServerReflection]:
    (_, v1), (_, v1alpha) = reflection_services([TEST_SERVICE])
    assert isinstance(v1, ServerReflection) and isinstance(v1alpha, ServerReflection)
    return v1, v1alpha


def _file_names(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


# --------------------------------------------------------------------------- answers


def test_v1_is_v1alpha_renamed_in_a_private_pool() -> None:
    assert V1_SERVICE.full_name == "grpc.reflection.v1.ServerReflection"
    assert V1_FILE.name == "grpc/reflection/v1/reflection.proto"
    method = V1_SERVICE.methods_by_name["ServerReflectionInfo"]
    assert method.client_streaming and method.server_streaming
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    alpha = V1ALPHA_SERVICE.file.message_types_by_name
    for name, message in V1_FILE.message_types_by_name.items():
        assert [(f.name, f.number, f.type) for f in message.fields] == [
            (f.name, f.number, f.type) for f in alpha[name].fields
        ]
    # Same wire format: a v1alpha request parses as v1.
    v1_request = GetMessageClass(method.input_type)
    parsed = v1_request.FromString(Request(file_containing_symbol="x.Y").SerializeToString())
    assert parsed.file_containing_symbol == "x.Y"
    assert V1_FILE.pool is not V1ALPHA_SERVICE.file.pool


def test_list_services_includes_reflection_itself() -> None:
    _, v1alpha = _impls()
    response = v1alpha.answer(Request(host="h", list_services="*"))
    assert [s.name for s in response.list_services_response.service] == [
        "testsvc.v1.TestService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert response.valid_host == "h"
    assert response.original_request.list_services == "*"


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("testsvc.v1.TestService", "testsvc/v1/test.proto"),
        ("testsvc.v1.TestService.Echo", "testsvc/v1/test.proto"),
        ("testsvc.v1.EchoRequest", "testsvc/v1/test.proto"),
        ("testsvc.v1.EchoRequest.payload", "testsvc/v1/test.proto"),
        ("google.protobuf.Any", "google/protobuf/any.proto"),
        # Nested enum and its value, which the upb pool's own lookup misses.
        ("google.protobuf.FieldDescriptorProto.Type", "google/protobuf/descriptor.proto"),
        ("google.protobuf.FieldDescriptorProto.TYPE_INT32", "google/protobuf/descriptor.proto"),
        (
            "google.protobuf.FieldDescriptorProto.Type.TYPE_INT32",
            "google/protobuf/descriptor.proto",
        ),
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
        ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", V1_FILE.name),
        ("grpc.reflection.v1alpha.ServerReflection", "grpc_reflection/v1alpha/reflection.proto"),
    ],
)
def test_file_containing_symbol(symbol: str, file: str) -> None:
    v1, _ = _impls()
    v1_request = GetMessageClass(V1_FILE.message_types_by_name["ServerReflectionRequest"])
    response = v1.answer(v1_request(file_containing_symbol=symbol))
    assert response.WhichOneof("message_response") == "file_descriptor_response"
    assert _file_names(response)[0] == file


def test_transitive_dependencies_are_sent_once_per_stream() -> None:
    _, v1alpha = _impls()
    sent: set[str] = set()
    first = v1alpha.answer(Request(file_by_filename="testsvc/v1/test.proto"), sent)
    assert _file_names(first) == ["testsvc/v1/test.proto", "google/protobuf/any.proto"]
    # The requested file is always the answer; dependencies already sent are not repeated.
    again = v1alpha.answer(Request(file_containing_symbol="testsvc.v1.EchoRequest"), sent)
    assert _file_names(again) == ["testsvc/v1/test.proto"]
    # A fresh stream gets everything again.
    fresh = v1alpha.answer(Request(file_by_filename="testsvc/v1/test.proto"))
    assert len(_file_names(fresh)) == 2


@pytest.mark.parametrize(
    "request_",
    [
        Request(file_containing_symbol="testsvc.v1.Nope"),
        Request(file_containing_symbol="testsvc.v1.TestService.Nope"),
        Request(file_containing_symbol="testsvc.v1"),
        Request(file_by_filename="nope.proto"),
        Request(all_extension_numbers_of_type="testsvc.v1.Missing"),
        Request(
            file_containing_extension={
                "containing_type": "testsvc.v1.EchoRequest",
                "extension_number": 100,
            }
        ),
    ],
)
def test_unknown_names_are_not_found_error_responses(request_: Any) -> None:
    _, v1alpha = _impls()
    response = v1alpha.answer(request_)
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "not found" in response.error_response.error_message


def test_extension_found_by_number_and_listed() -> None:
    # buf.validate's options extend google.protobuf.FieldOptions in the default pool
    # (the generated protovalidate module is loaded by the services' imports).
    from buf.validate import validate_pb2

    field_rule = validate_pb2.field
    containing = field_rule.containing_type.full_name
    _, v1alpha = _impls()
    numbers = v1alpha.answer(Request(all_extension_numbers_of_type=containing))
    assert field_rule.number in numbers.all_extension_numbers_response.extension_number
    found = v1alpha.answer(
        Request(
            file_containing_extension={
                "containing_type": containing,
                "extension_number": field_rule.number,
            }
        )
    )
    assert _file_names(found)[0] == "buf/validate/validate.proto"


def test_extension_numbers_and_empty_request() -> None:
    _, v1alpha = _impls()
    response = v1alpha.answer(Request(all_extension_numbers_of_type="testsvc.v1.EchoRequest"))
    assert response.all_extension_numbers_response.base_type_name == "testsvc.v1.EchoRequest"
    assert list(response.all_extension_numbers_response.extension_number) == []
    empty = v1alpha.answer(Request())
    assert empty.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


# --------------------------------------------------------------------------- over the wire


@asynccontextmanager
async def running_server() -> AsyncIterator[int]:
    services: list[tuple[Any, object]] = [(TEST_SERVICE, TestServiceImpl())]
    app = ConnectApp([*services, *reflection_services([d for d, _ in services])])
    config = make_config("127.0.0.1", 0, graceful_timeout=0.5)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(serve, app, config)
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


async def _buf(*args: str) -> str:
    buf = require_buf()
    result = await trio.run_process(
        [buf, "curl", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.parametrize("reflect_protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_calls_through_reflection(reflect_protocol: str) -> None:
    async with running_server() as port:
        out = await _buf(
            "--protocol", "grpc", "--http2-prior-knowledge",
            "--reflect-protocol", reflect_protocol,
            "--data", '{"message": "hi"}',
            f"http://127.0.0.1:{port}/testsvc.v1.TestService/Echo",
        )  # fmt: skip
    body = json.loads(out)
    assert body["message"] == "hi"
    assert body["protocol"] == "grpc"


async def test_buf_curl_lists_methods_and_services() -> None:
    async with running_server() as port:
        url = f"http://127.0.0.1:{port}"
        methods = await _buf("--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", url)
        services = await _buf(
            "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", url
        )
    assert {
        "testsvc.v1.TestService/Echo",
        "testsvc.v1.TestService/Chat",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    } <= set(methods.split())
    assert "testsvc.v1.TestService" in services.split()


def _grpcio_resolve(port: int) -> tuple[list[str], str, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        services = list(database.get_services())
        method = pool.FindMethodByName("testsvc.v1.TestService.Count")
        nested = pool.FindMessageTypeByName("testsvc.v1.FailRequest")
        return (
            services,
            method.input_type.full_name,
            nested.fields_by_name["details"].message_type.full_name,
        )


async def test_grpcio_reflection_client_resolves_services_and_types() -> None:
    async with running_server() as port:
        services, input_type, any_type = await trio.to_thread.run_sync(_grpcio_resolve, port)
    assert "testsvc.v1.TestService" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert input_type == "testsvc.v1.CountRequest"
    assert any_type == "google.protobuf.Any"  # resolved through a transitive dependency


def _interleaved(port: int, path: str) -> list[Any]:
    """One stream, each request sent only after the previous answer arrived: proves the
    server answers while the request stream is still open (true bidi over h2)."""
    requests: queue.Queue[Any] = queue.Queue()

    def outgoing() -> Iterator[Any]:
        while (item := requests.get()) is not None:
            yield item

    answers: list[Any] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            path,
            request_serializer=Request.SerializeToString,
            response_deserializer=v1alpha_pb2.ServerReflectionResponse.FromString,
        )
        responses = call(outgoing(), timeout=10)
        for request in (
            Request(list_services=""),
            Request(file_containing_symbol="testsvc.v1.SumRequest"),
            Request(file_containing_symbol="no.Such"),
        ):
            requests.put(request)
            answers.append(next(responses))
        requests.put(None)
        assert list(responses) == []
    return answers


@pytest.mark.parametrize("path", [V1_PATH, V1ALPHA_PATH])
async def test_bidi_stream_answers_each_request_as_it_arrives(path: str) -> None:
    async with running_server() as port:
        answers = await trio.to_thread.run_sync(_interleaved, port, path)
    assert answers[0].WhichOneof("message_response") == "list_services_response"
    assert _file_names(answers[1])[0] == "testsvc/v1/test.proto"
    assert answers[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
