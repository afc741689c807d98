"""Serving under hypercorn's trio worker: configuration, TLS, and the protocol fixes."""
