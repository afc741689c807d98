"""A hand-written Connect, gRPC and gRPC-Web server layer for trio and hypercorn.

It serves any protobuf service; it knows nothing about the services it serves.

Modules, one job each:

- ``errors``, ``headers``, ``context``, ``service``: the seams (codes, metadata, call
  context, routes built once from descriptors).
- ``envelope``, ``codec``, ``compression``, ``timeouts``, ``b64``: sans-IO building blocks
  and the codec/compressor registries.
- ``protocol`` (the ``ServerCall`` interface), ``protocol_connect``, ``protocol_grpc``:
  each wire protocol as a sans-IO object turning bytes into messages and results into
  ASGI events.
- ``dispatch``: the pre-protocol checks (404/405/415/505) and content-type bindings.
- ``runner``: the I/O of one call (body, deadline scope, disconnect watcher).
- ``app``: ``ConnectApp``, the ASGI application (lifespan, plain HTTP routes, RPCs);
  ``cors``: the opt-in CORS policy it applies for browser clients.
- ``server``: running an app under hypercorn's trio worker; ``client``: a Connect client.

Production features, all opt-in and resolved at start-up:

- ``hooks``: the ``Interceptor`` (before the handler, may refuse) and ``Observer`` (call
  start and end) interfaces ``ConnectApp`` takes.
- ``auth``: bearer tokens from a YAML/JSON file, an interceptor.
- ``metrics``: Prometheus series as an observer, and the ``/metrics`` ASGI app.
- ``logs``: ``configure_logging`` (plain or JSON lines) and the ``AccessLog`` observer;
  ``request_id``: validating or generating ``x-request-id``.
- ``limits``: the open-stream bound (RESOURCE_EXHAUSTED past it).
- ``shutdown``: ``ShutdownSignal``, which ends open streams with UNAVAILABLE when the
  server stops; ``tls``: server TLS reloaded when its files change, optional mTLS.

Transport decisions: gRPC over HTTP/1.1 is refused with 505 (no trailers there); gRPC
without ``te: trailers`` is refused with 400 plus ``grpc-status: 3`` in the headers,
because hypercorn silently drops response trailers for such requests.
"""

from connect_proto.errors import Code, RpcError
from connect_proto.headers import Headers

__all__ = ["Code", "Headers", "RpcError"]
