from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("message", "payload", "response_headers", "response_trailers")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRAILERS_FIELD_NUMBER: _ClassVar[int]
    message: str
    payload: bytes
    response_headers: _containers.RepeatedCompositeFieldContainer[Header]
    response_trailers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, message: _Optional[str] = ..., payload: _Optional[bytes] = ..., response_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., response_trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("message", "payload", "request_headers", "timeout_seconds", "protocol")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    message: str
    payload: bytes
    request_headers: _containers.RepeatedCompositeFieldContainer[Header]
    timeout_seconds: float
    protocol: str
    def __init__(self, message: _Optional[str] = ..., payload: _Optional[bytes] = ..., request_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., timeout_seconds: _Optional[float] = ..., protocol: _Optional[str] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("count", "delay_ms", "fail_code", "fail_message", "response_headers", "response_trailers")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    FAIL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRAILERS_FIELD_NUMBER: _ClassVar[int]
    count: int
    delay_ms: int
    fail_code: int
    fail_message: str
    response_headers: _containers.RepeatedCompositeFieldContainer[Header]
    response_trailers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, count: _Optional[int] = ..., delay_ms: _Optional[int] = ..., fail_code: _Optional[int] = ..., fail_message: _Optional[str] = ..., response_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., response_trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("number",)
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    number: int
    def __init__(self, number: _Optional[int] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("code", "message", "details", "response_headers", "response_trailers")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRAILERS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    response_headers: _containers.RepeatedCompositeFieldContainer[Header]
    response_trailers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ..., response_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., response_trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class FailResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("greeting",)
    GREETING_FIELD_NUMBER: _ClassVar[int]
    greeting: str
    def __init__(self, greeting: _Optional[str] = ...) -> None: ...

class SumRequest(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class SumResponse(_message.Message):
    __slots__ = ("total", "count")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    total: int
    count: int
    def __init__(self, total: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class SleepRequest(_message.Message):
    __slots__ = ("ms",)
    MS_FIELD_NUMBER: _ClassVar[int]
    ms: int
    def __init__(self, ms: _Optional[int] = ...) -> None: ...

class SleepResponse(_message.Message):
    __slots__ = ("timeout_seconds",)
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    timeout_seconds: float
    def __init__(self, timeout_seconds: _Optional[float] = ...) -> None: ...
