"""A hand-written Connect, gRPC and gRPC-Web server layer for trio and hypercorn.

It serves any protobuf service; it knows nothing about the services it serves.
"""

from connect_proto.errors import Code, RpcError
from connect_proto.headers import Headers

__all__ = ["Code", "Headers", "RpcError"]
