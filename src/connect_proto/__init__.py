"""A hand-written Connect, gRPC and gRPC-Web server layer for trio and hypercorn.

It serves any protobuf service; it knows nothing about the services it serves. Everything a
service or a user needs is imported from here; the modules behind it are private and may
change.

Layers, each a private package:

- ``_wire``: the wire format, sans-IO. Envelopes, the codec and compressor registries,
  timeouts, and one ``ServerCall`` per protocol (``connect``, ``grpc`` for gRPC and
  gRPC-Web) turning bytes into messages and results into ASGI events; ``dispatch`` picks
  the protocol and makes the pre-protocol checks (404/405/415/505).
- ``_app``: ``ConnectApp``, the ASGI application (lifespan, plain HTTP routes, RPCs);
  ``runner``, the I/O of one call (body, deadline scope, disconnect watcher); the
  open-stream limiter; the shutdown signal that ends open streams with UNAVAILABLE.
- ``_server``: serving under hypercorn's trio worker, reloadable TLS, and the protocol
  fixes hypercorn 0.18 needs.
- ``_extras``: optional parts, all opt-in: bearer-token auth, Prometheus metrics, logs and
  the access log, gRPC health, reflection, CORS.
- Seams at the top: ``_errors`` (codes and ``RpcError``), ``_headers``, ``_context``,
  ``_service`` (routes built once from descriptors), ``_hooks`` (interceptors and
  observers), ``_types`` (ASGI and handler types), ``_client`` (a Connect client).

Transport decisions: gRPC over HTTP/1.1 is refused with 505 (no trailers there); gRPC
without ``te: trailers`` is refused with 400 plus ``grpc-status: 3`` in the headers,
because hypercorn silently drops response trailers for such requests.
"""

from connect_proto._app.app import ConnectApp
from connect_proto._app.limits import StreamLimiter
from connect_proto._client import ConnectClient, UnaryResult
from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._extras.auth import BearerAuth, TokenFileError, TokenGrant, load_token_file
from connect_proto._extras.cors import CorsPolicy
from connect_proto._extras.health import (
    HEALTH_SERVICE,
    NOT_SERVING,
    SERVING,
    HealthService,
    HealthStatus,
    Readiness,
    healthz_app,
)
from connect_proto._extras.logs import AccessLog, configure_logging
from connect_proto._extras.metrics import RpcMetrics, metrics_app
from connect_proto._extras.reflection import reflection_services
from connect_proto._headers import Headers
from connect_proto._hooks import CallOutcome, Interceptor, Observer
from connect_proto._server.compat import UnsupportedLibraryError
from connect_proto._server.flood import FloodLimits
from connect_proto._server.serve import RpcConfig, make_config, serve
from connect_proto._server.tls import ReloadingTLS
from connect_proto._service import MethodKind, RpcRoute, route_table
from connect_proto._types import AsgiApp, SendMessage

__all__ = [
    "HEALTH_SERVICE",
    "NOT_SERVING",
    "SERVING",
    "AccessLog",
    "AsgiApp",
    "BearerAuth",
    "CallOutcome",
    "Code",
    "ConnectApp",
    "ConnectClient",
    "CorsPolicy",
    "FloodLimits",
    "Headers",
    "HealthService",
    "HealthStatus",
    "Interceptor",
    "MethodKind",
    "Observer",
    "Readiness",
    "ReloadingTLS",
    "RequestContext",
    "RpcConfig",
    "RpcError",
    "RpcMetrics",
    "RpcRoute",
    "SendMessage",
    "StreamLimiter",
    "TokenFileError",
    "TokenGrant",
    "UnaryResult",
    "UnsupportedLibraryError",
    "configure_logging",
    "healthz_app",
    "load_token_file",
    "make_config",
    "metrics_app",
    "reflection_services",
    "route_table",
    "serve",
]
