"""Serving on hypercorn's trio worker, with nothing patched.

serve.py (``serve``, ``make_config``, ``RpcConfig``) runs worker.py's loop, whose
connections are tcp_server.py's ``RpcTCPServer`` speaking protocol.py's HTTP/1.1 and
HTTP/2 protocols, on h2_connection.py's ``RpcH2Connection`` (which encodes headers with
header_encoder.py and checks header blocks with inbound_headers.py and
outbound_headers.py), scheduled by scheduler.py and written through coalescer.py;
flood.py limits cheap HTTP/2 frames; compat.py checks
the hypercorn and h2 versions these were written for; tls.py reloads certificates.
docs/hypercorn-upstream.md describes the hypercorn bugs the subclasses work around.
"""
