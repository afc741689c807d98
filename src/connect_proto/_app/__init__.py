"""The ASGI application: routing, the I/O of one call, stream limits and shutdown."""
