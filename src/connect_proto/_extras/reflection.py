"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``) for any ConnectApp.

Tools such as ``buf curl``, ``grpcurl`` and grpcio's ``ProtoReflectionDescriptorDatabase``
discover services and schemas through the bidi ``ServerReflectionInfo`` RPC. Everything
answered here comes from the descriptor pools of the registered services, so the module
knows nothing about the services it describes.

The v1 service is v1alpha with the package renamed (the messages are identical on the
wire). Rather than committing a second generated module (whose ``grpc.reflection.v1``
import path would shadow grpcio's own top-level ``grpc`` package), the v1 file is derived
at import time from grpcio-reflection's v1alpha descriptor and loaded into a private pool,
so it can never collide with another copy of that file in the default pool.

Wiring::

    services = [(SERVICE_DESCRIPTOR, impl), ...]
    app = ConnectApp([*services, *reflection_services([d for d, _ in services])])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Final, cast

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from connect_proto._context import RequestContext
from connect_proto._errors import Code
from connect_proto._types import SendMessage

# v1 messages are v1alpha's under another package name, so one pair of types describes
# both (the v1 classes are made at import time, below).
ReflectionRequest = v1alpha_pb2.ServerReflectionRequest
ReflectionResponse = v1alpha_pb2.ServerReflectionResponse

V1ALPHA_FILE: Final[FileDescriptor] = v1alpha_pb2.DESCRIPTOR
V1_FILE_NAME: Final = "grpc/reflection/v1/reflection.proto"
V1_PACKAGE: Final = "grpc.reflection.v1"
SERVICE_NAME: Final = "ServerReflection"


def _derive_v1_file() -> FileDescriptor:
    """The v1alpha file with its package renamed, in a pool of its own."""
    proto = descriptor_pb2.FileDescriptorProto()
    V1ALPHA_FILE.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    new_prefix = f".{V1_PACKAGE}."
    proto.name = V1_FILE_NAME
    proto.package = V1_PACKAGE
    proto.ClearField("options")  # java/go package options name the v1alpha locations

    def rename(type_name: str) -> str:
        if type_name.startswith(old_prefix):
            return new_prefix + type_name[len(old_prefix) :]
        return type_name

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    return pool.AddSerializedFile(proto.SerializeToString())


V1_FILE: Final[FileDescriptor] = _derive_v1_file()
V1_SERVICE: Final[ServiceDescriptor] = V1_FILE.services_by_name[SERVICE_NAME]
V1ALPHA_SERVICE: Final[ServiceDescriptor] = V1ALPHA_FILE.services_by_name[SERVICE_NAME]


class SchemaIndex:
    """Resolves file names and symbols to files across the pools of the given services.

    Most services live in the default pool; a service from a private pool (like v1
    reflection itself) brings its pool along, searched after the ones seen before it.
    """

    def __init__(self, services: Iterable[ServiceDescriptor]) -> None:
        self.service_names: list[str] = []
        self._pools: list[DescriptorPool] = []
        for service in services:
            if service.full_name not in self.service_names:
                self.service_names.append(service.full_name)
            pool = service.file.pool
            if not any(pool is known for known in self._pools):
                self._pools.append(pool)
        default = descriptor_pool.Default()
        if not any(default is known for known in self._pools):
            self._pools.append(default)

    def file_by_name(self, name: str) -> FileDescriptor | None:
        for pool in self._pools:
            try:
                return pool.FindFileByName(name)
            except KeyError:
                continue
        return None

    def file_containing_symbol(self, symbol: str) -> FileDescriptor | None:
        for pool in self._pools:
            found = _file_containing_symbol(pool, symbol)
            if found is not None:
                return found
        return None

    def message(self, full_name: str) -> tuple[DescriptorPool, Descriptor] | None:
        for pool in self._pools:
            try:
                return pool, pool.FindMessageTypeByName(full_name)
            except KeyError:
                continue
        return None

    def file_containing_extension(self, containing_type: str, number: int) -> FileDescriptor | None:
        found = self.message(containing_type)
        if found is None:
            return None
        pool, message = found
        try:
            extension = pool.FindExtensionByNumber(message, number)
            return pool.FindFileContainingSymbol(extension.full_name)
        except KeyError:
            return None

    def extension_numbers(self, containing_type: str) -> list[int] | None:
        found = self.message(containing_type)
        if found is None:
            return None
        pool, message = found
        return sorted(ext.number for ext in pool.FindAllExtensions(message))


def _file_containing_symbol(pool: DescriptorPool, symbol: str) -> FileDescriptor | None:
    """The file defining ``symbol``: a message, enum, service, extension, or a member of
    one (method, field, oneof, nested type, enum value), at any nesting depth.

    The pool's own lookup misses members and some nested names (upb), so the parent
    scope is resolved and the leaf looked up in it.
    """
    if not symbol:
        return None
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        pass
    for find in (pool.FindMessageTypeByName, pool.FindEnumTypeByName, pool.FindServiceByName):
        try:
            return find(symbol).file
        except KeyError:
            continue
    parent, _, leaf = symbol.rpartition(".")
    if not parent:
        return None
    try:
        service = pool.FindServiceByName(parent)
    except KeyError:
        pass
    else:
        return service.file if leaf in service.methods_by_name else None
    try:
        message = pool.FindMessageTypeByName(parent)
    except KeyError:
        pass
    else:
        members = (
            message.fields_by_name,
            message.oneofs_by_name,
            message.nested_types_by_name,
            message.enum_types_by_name,
            message.enum_values_by_name,
            message.extensions_by_name,
        )
        return message.file if any(leaf in names for names in members) else None
    try:
        enum = pool.FindEnumTypeByName(parent)
    except KeyError:
        return None
    return enum.file if leaf in enum.values_by_name else None


def _with_dependencies(file: FileDescriptor, already_sent: set[str]) -> list[bytes]:
    """``file`` first (always), then its transitive imports not yet sent on this stream.

    Clients cache what they receive per stream, so repeating a dependency is waste; the
    requested file itself is always repeated because it is the answer.
    """
    out = [file.serialized_pb]
    already_sent.add(file.name)
    stack = list(reversed(file.dependencies))
    while stack:
        dep = stack.pop()
        if dep.name in already_sent:
            continue
        already_sent.add(dep.name)
        out.append(dep.serialized_pb)
        stack.extend(reversed(dep.dependencies))
    return out


class ServerReflection:
    """Handler for one ``ServerReflection`` service version.

    ``response_type`` is that version's ``ServerReflectionResponse`` class: v1 and
    v1alpha share the shape, so one implementation serves both.
    """

    def __init__(self, index: SchemaIndex, response_type: type[ReflectionResponse]) -> None:
        self._index = index
        self._response_type = response_type

    async def server_reflection_info(
        self,
        requests: AsyncIterator[ReflectionRequest],
        ctx: RequestContext,
        send: SendMessage[ReflectionResponse],
    ) -> None:
        sent: set[str] = set()
        async for request in requests:
            await send(self.answer(request, sent))

    def answer(
        self, request: ReflectionRequest, sent: set[str] | None = None
    ) -> ReflectionResponse:
        """The response to one request (``sent``: files already sent on the stream)."""
        sent = set() if sent is None else sent
        response = self._response_type(valid_host=request.host)
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        index = self._index
        if kind == "list_services":
            for name in index.service_names:
                response.list_services_response.service.add(name=name)
        elif kind == "file_by_filename":
            file = index.file_by_name(request.file_by_filename)
            if file is None:
                return _error(response, Code.NOT_FOUND, f"file {request.file_by_filename!r}")
            response.file_descriptor_response.file_descriptor_proto.extend(
                _with_dependencies(file, sent)
            )
        elif kind == "file_containing_symbol":
            file = index.file_containing_symbol(request.file_containing_symbol)
            if file is None:
                return _error(
                    response, Code.NOT_FOUND, f"symbol {request.file_containing_symbol!r}"
                )
            response.file_descriptor_response.file_descriptor_proto.extend(
                _with_dependencies(file, sent)
            )
        elif kind == "file_containing_extension":
            ext = request.file_containing_extension
            file = index.file_containing_extension(ext.containing_type, ext.extension_number)
            if file is None:
                what = f"extension {ext.extension_number} of {ext.containing_type!r}"
                return _error(response, Code.NOT_FOUND, what)
            response.file_descriptor_response.file_descriptor_proto.extend(
                _with_dependencies(file, sent)
            )
        elif kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            numbers = index.extension_numbers(name)
            if numbers is None:
                return _error(response, Code.NOT_FOUND, f"type {name!r}")
            response.all_extension_numbers_response.base_type_name = name
            response.all_extension_numbers_response.extension_number.extend(numbers)
        else:
            # grpc-go ends the stream here; an error_response keeps the stream usable.
            return _error(response, Code.INVALID_ARGUMENT, "no message_request set")
        return response


def _error(response: ReflectionResponse, code: Code, what: str) -> ReflectionResponse:
    response.error_response.error_code = code.grpc
    response.error_response.error_message = f"{what} not found" if code is Code.NOT_FOUND else what
    return response


def reflection_services(
    services: Sequence[ServiceDescriptor],
) -> list[tuple[ServiceDescriptor, object]]:
    """``(descriptor, implementation)`` pairs for ConnectApp: reflection v1 and v1alpha
    describing ``services`` and themselves."""
    index = SchemaIndex([*services, V1_SERVICE, V1ALPHA_SERVICE])
    # The derived v1 class has exactly v1alpha's fields (see _derive_v1_file).
    v1_response = cast(
        type[ReflectionResponse],
        GetMessageClass(V1_FILE.message_types_by_name["ServerReflectionResponse"]),
    )
    return [
        (V1_SERVICE, ServerReflection(index, v1_response)),
        (V1ALPHA_SERVICE, ServerReflection(index, v1alpha_pb2.ServerReflectionResponse)),
    ]


__all__ = [
    "V1ALPHA_SERVICE",
    "V1_SERVICE",
    "SchemaIndex",
    "ServerReflection",
    "reflection_services",
]
