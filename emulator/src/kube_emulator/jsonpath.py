"""Kubernetes JSONPath (``k8s.io/client-go/util/jsonpath``) as the API server evaluates it for
a CRD's ``additionalPrinterColumns``: fields, ``..`` recursive descent, ``*``, ``[n]``,
slices ``[a:b:c]``, unions ``[a,b]``, ``['key']``, and filters ``[?(@.x == "y")]`` with
``==``, ``!=``, ``<``, ``>``, ``<=``, ``>=`` or plain existence.

The semantics follow client-go rather than other JSONPath dialects: a missing key yields
nothing (the server allows missing keys), an out-of-range index or a filter over a non-list
is an error, and comparisons between different kinds (a string and a number, an integer
and a float) are errors. The caller turns errors into an empty cell, as the server does.
Syntax: https://kubernetes.io/docs/reference/kubectl/jsonpath/
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias


class JSONPathError(ValueError):
    """A template that does not parse, or one that fails on this object."""


# --- syntax tree ------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Recursive:
    pass


@dataclass(frozen=True)
class Slice:
    start: int | None  # None: not given
    end: int | None
    step: int | None
    end_derived: bool  # `[n]`: end is n+1, computed by the parser


@dataclass(frozen=True)
class Filter:
    left: tuple[Node, ...]
    operator: str  # "exists" or a comparison
    right: tuple[Node, ...]


@dataclass(frozen=True)
class Union:
    branches: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True)
class Literal:
    value: str | int | float | bool
    per_input: bool  # numbers and booleans repeat once per input value; text appears once


Node: TypeAlias = Field | Wildcard | Recursive | Slice | Filter | Union | Literal

_SLICE_RE = re.compile(r"^(-?\d*)(:-?\d*)?(:-?\d*)?$")
_DICT_KEY_RE = re.compile(r"^'([^']*)'$")
_FILTER_RE = re.compile(r"^([^!<>=]+)([!<>=]+)(.+?)\Z", re.DOTALL)
_TERMINATORS = frozenset(".,[]$@{}")


def _is_alphanumeric(char: str) -> bool:
    return char == "_" or char.isalpha() or char.isdigit()


def _is_terminator(char: str) -> bool:
    return char == "" or char.isspace() or char in _TERMINATORS


class _Parser:
    """One ``{...}`` action, parsed the way client-go's parser does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        char = self.peek()
        self.pos += 1
        return char

    def parse_action(self) -> tuple[Node, ...]:
        nodes: list[Node] = []
        while True:
            rest = self.text[self.pos :]
            if rest.startswith("}"):
                self.pos += 1
                return tuple(nodes)
            if rest.startswith("[?("):
                nodes.append(self._filter())
                continue
            if rest.startswith(".."):
                if nodes and isinstance(nodes[-1], Recursive):
                    raise JSONPathError("invalid multiple recursive descent")
                self.pos += 2
                nodes.append(Recursive())
                if _is_alphanumeric(self.peek()):
                    nodes.append(self._field())
                continue
            char = self.next()
            if char in ("", "\n", "\r"):
                raise JSONPathError("unclosed action")
            if char in (" ", "@", "$"):
                continue
            if char == "[":
                nodes.extend(self._array())
            elif char in ("'", '"'):
                nodes.append(self._quote(char))
            elif char == ".":
                nodes.append(self._field())
            elif char in "+-" or char.isdigit():
                self.pos -= 1
                nodes.append(self._number())
            elif _is_alphanumeric(char):
                self.pos -= 1
                nodes.append(self._identifier())
            else:
                raise JSONPathError(f"unrecognized character in action: {char!r}")

    def _field(self) -> Node:
        start = self.pos
        while True:
            char = self.peek()
            if char == "\\":
                self.pos += 2
                continue
            if _is_terminator(char):
                break
            self.pos += 1
        name = self.text[start : self.pos]
        return Wildcard() if name == "*" else Field(name.replace("\\", ""))

    def _array(self) -> list[Node]:
        end = self.text.find("]", self.pos)
        newline = self.text.find("\n", self.pos)
        if end < 0 or 0 <= newline < end:
            raise JSONPathError("unterminated array")
        inner = self.text[self.pos : end]
        self.pos = end + 1
        if inner == "*":
            inner = ":"
        parts = inner.split(",")
        if len(parts) > 1:
            return [Union(tuple(_parse_action(f"[{part.strip(' ')}]") for part in parts))]
        key = _DICT_KEY_RE.match(inner)
        if key:
            return list(_parse_action("." + key.group(1)))
        match = _SLICE_RE.match(inner)
        if not match:
            raise JSONPathError(f"invalid array index {inner}")
        first, second, third = match.groups()
        start = _bound(first)
        if second is None:
            # `[n]` means n..n+1
            return [Slice(start, (start or 0) + 1, None, True)]
        return [Slice(start, _bound(second[1:]), _bound(third[1:] if third else ""), False)]

    def _quote(self, quote: str) -> Node:
        start = self.pos - 1
        while True:
            char = self.next()
            if char in ("", "\n"):
                raise JSONPathError("unterminated quoted string")
            if char == quote and self.text[self.pos - 2] != "\\":
                break
        raw = self.text[start + 1 : self.pos - 1]
        return Literal(_unquote(raw), per_input=False)

    def _number(self) -> Node:
        start = self.pos
        if self.peek() in "+-":
            self.pos += 1
        while self.peek() == "." or self.peek().isdigit():
            self.pos += 1
        text = self.text[start : self.pos]
        if re.fullmatch(r"[+-]?\d+", text):
            return Literal(int(text), per_input=True)
        try:
            return Literal(float(text), per_input=True)
        except ValueError:
            raise JSONPathError(f"cannot parse number {text}") from None

    def _identifier(self) -> Node:
        start = self.pos
        while _is_alphanumeric(self.peek()):
            self.pos += 1
        word = self.text[start : self.pos]
        if word in ("true", "false"):
            return Literal(word == "true", per_input=True)
        raise JSONPathError(f"unsupported identifier {word!r} in a column path")

    def _filter(self) -> Node:
        self.pos += 3  # "[?("
        start = self.pos
        opened = closed = False
        pair = ""
        while True:
            char = self.next()
            if char in ("", "\n"):
                raise JSONPathError("unclosed array expect ]")
            if char in ("'", '"'):
                if not opened:
                    opened, pair = True, char
                    continue
                if self.text[self.pos - 2] != "\\" and char == pair:
                    closed = True
            elif char == ")" and opened == closed:
                break
        if self.next() != "]":
            raise JSONPathError("unclosed array expect ]")
        inner = self.text[start : self.pos - 2]
        match = _FILTER_RE.match(inner)
        if match is None:
            return Filter(_parse_action(inner), "exists", ())
        left, operator, right = match.groups()
        return Filter(_parse_action(left), operator, _parse_action(right))


def _bound(text: str) -> int | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise JSONPathError(f"array index {text} is not a number") from None


def _unquote(raw: str) -> str:
    # Go's strconv.Unquote semantics for the escapes that matter here.
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), raw)


def _parse_action(text: str) -> tuple[Node, ...]:
    parser = _Parser(text + "}")
    nodes = parser.parse_action()
    if parser.pos != len(parser.text):
        raise JSONPathError(f"unexpected text after the action in {text!r}")
    return nodes


@functools.lru_cache(maxsize=256)
def compile_path(json_path: str) -> tuple[Node, ...]:
    """A column's ``jsonPath`` as the server parses it: the template ``{<jsonPath>}``."""
    return _parse_action(json_path)


def find(obj: Any, json_path: str) -> list[Any]:
    """Every value ``json_path`` selects in ``obj`` (raises JSONPathError)."""
    return _eval_list([obj], compile_path(json_path))


# --- evaluation -----------------------------------------------------------------------------


def _eval_list(values: list[Any], nodes: Iterable[Node]) -> list[Any]:
    for node in nodes:
        values = _eval(values, node)
    return values


def _eval(values: list[Any], node: Node) -> list[Any]:
    if isinstance(node, Field):
        return _eval_field(values, node.name)
    if isinstance(node, Wildcard):
        return [child for value in values for child in _children(value)]
    if isinstance(node, Recursive):
        return _eval_recursive(values)
    if isinstance(node, Slice):
        return _eval_slice(values, node)
    if isinstance(node, Filter):
        return _eval_filter(values, node)
    if isinstance(node, Union):
        return [out for branch in node.branches for out in _eval_list(values, branch)]
    if node.per_input:
        return [node.value for _ in values]
    return [node.value]


def _eval_field(values: list[Any], name: str) -> list[Any]:
    if name == "":
        return values
    return [value[name] for value in values if isinstance(value, dict) and name in value]


def _children(value: Any) -> list[Any]:
    """What ``*`` and ``..`` descend into: map values (in key order), list items, and, as
    Go indexes them, a string's bytes."""
    if isinstance(value, dict):
        return [value[key] for key in sorted(value)]
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return list(value.encode())
    return []


def _eval_recursive(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        children = _children(value)
        if children:
            out.append(value)
            out.extend(_eval_recursive(children))
    return out


def _eval_slice(values: list[Any], node: Slice) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if value is None:
            continue
        if not isinstance(value, list):
            raise JSONPathError(f"{type(value).__name__} is not array or slice")
        length = len(value)
        start = node.start if node.start is not None else 0
        if start < 0:
            start += length
        end = node.end if node.end is not None else length
        if end < 0 or (end == 0 and node.end_derived):
            end += length
        if end == start:
            return out  # asking for nothing is allowed, even out of range
        if not 0 <= start < length:
            raise JSONPathError(f"array index out of bounds: index {start}, length {length}")
        if not 0 <= end <= length:
            raise JSONPathError(f"array index out of bounds: index {end - 1}, length {length}")
        if start > end:
            raise JSONPathError(f"starting index {start} is greater than ending index {end}")
        step = 1
        if node.step is not None:
            if node.step <= 0:
                raise JSONPathError("step must be > 0")
            step = node.step
        out.extend(value[start:end:step])
    return out


def _eval_filter(values: list[Any], node: Filter) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not isinstance(value, list):
            raise JSONPathError(f"{value!r} is not array or slice and cannot be filtered")
        for item in value:
            if node.operator == "exists":
                try:
                    found = _eval_list([item], node.left)
                except JSONPathError:
                    found = []
                if found:
                    out.append(item)
                continue
            left = _single(_eval_list([item], node.left))
            if left is _NOTHING:
                continue
            right = _single(_eval_list([item], node.right))
            if right is _NOTHING:
                continue
            if _compare(node.operator, left, right):
                out.append(item)
    return out


_NOTHING = object()


def _single(results: list[Any]) -> Any:
    if not results:
        return _NOTHING
    if len(results) > 1:
        raise JSONPathError("can only compare one element at a time")
    return results[0]


def _kind(value: Any) -> str:
    # text/template's basicKind: bool, int, float and string compare; nothing else does.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise JSONPathError("invalid type for comparison")


def _equal(left: Any, right: Any) -> bool:
    if _kind(left) != _kind(right):
        raise JSONPathError("incompatible types for comparison")
    return bool(left == right)


def _less(left: Any, right: Any) -> bool:
    kind = _kind(left)
    if kind == "bool":
        raise JSONPathError("invalid type for comparison")
    if kind != _kind(right):
        raise JSONPathError("incompatible types for comparison")
    return bool(left < right)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": _less,
    "<=": lambda a, b: _less(a, b) or _equal(a, b),
    ">": lambda a, b: not (_less(a, b) or _equal(a, b)),
    ">=": lambda a, b: not _less(a, b),
}


def _compare(operator: str, left: Any, right: Any) -> bool:
    compare = _COMPARISONS.get(operator)
    if compare is None:
        raise JSONPathError(f"unrecognized filter operator {operator}")
    return compare(left, right)
