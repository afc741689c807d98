"""Base64 as the protocols use it: emit unpadded, accept padded or unpadded."""

from __future__ import annotations

import base64
import binascii


def encode_unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def decode_lenient(text: str, *, urlsafe: bool = False) -> bytes:
    """Decode standard (or URL-safe) base64 with or without padding; ValueError if invalid."""
    text = text.strip().rstrip("=")
    padded = text + "=" * (-len(text) % 4)
    try:
        if urlsafe:
            return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64: {exc}") from None
