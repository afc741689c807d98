"""A case-insensitive, ordered, multi-valued header map.

ASGI hands headers over as a list of byte pairs; names may arrive in any case on
HTTP/1.1. Duplicates keep their arrival order because metadata is multi-valued.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from connect_proto._wire.b64 import decode_lenient, encode_unpadded


class Headers:
    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        headers = cls()
        headers._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def add(self, name: str, value: str) -> None:
        self._items.append((name.lower(), value))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k == name.lower() for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def encode_binary_value(value: bytes) -> str:
    """A ``-bin`` metadata value: base64, emitted unpadded."""
    return encode_unpadded(value)


def decode_binary_values(values: Iterable[str]) -> list[bytes]:
    """Decode ``-bin`` metadata: repeated lines and comma-joined values, padded or not.

    Raises ValueError on invalid base64.
    """
    return [decode_lenient(part) for value in values for part in value.split(",") if part.strip()]
