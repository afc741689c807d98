"""Label and field selectors, parsed once per request."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StatusError, bad_request
from .validation import label_value_errors, qualified_name_errors

# The lexer of apimachinery's labels/selector.go: these characters end an identifier.
_SPECIAL = set("=!(),<>")
_TOKEN_RE = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # Upstream quirk worth a test: an object without the key matches.
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present:
            return False
        try:
            have, want = int(value or ""), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op == "gt" else have < want


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            break
        if match.group(1):
            tokens.append(match.group(1))
        pos = match.end()
        if not text[pos:].strip():
            break
    return tokens


def parse_label_selector(text: str | None) -> LabelSelector:
    if not text or not text.strip():
        return LabelSelector()
    tokens = _tokenize(text)
    pos = 0
    reqs: list[Requirement] = []

    def fail(why: str) -> StatusError:
        return bad_request(f"unable to parse requirement: {why}")

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def ident(what: str) -> str:
        nonlocal pos
        tok = peek()
        if tok is None or tok in _SPECIAL or tok in ("==", "!="):
            raise fail(f"found '{tok or ''}', expected: {what}")
        pos += 1
        return tok

    def value_or_empty() -> str:
        # `k=` (empty value) is legal: the next token is a separator or the end.
        nonlocal pos
        tok = peek()
        if tok is None or tok in (",", ")"):
            return ""
        return ident("identifier")

    while True:
        values: tuple[str, ...]
        negate = False
        if peek() == "!":
            negate = True
            pos += 1
        key = ident("identifier")
        if negate:
            op, values = "!", ()
        else:
            tok = peek()
            if tok is None or tok == ",":
                op, values = "exists", ()
            elif tok in ("=", "=="):
                pos += 1
                op, values = "=", (value_or_empty(),)
            elif tok == "!=":
                pos += 1
                op, values = "!=", (value_or_empty(),)
            elif tok in ("in", "notin"):
                set_op = tok
                pos += 1
                if peek() != "(":
                    raise fail(f"found '{peek() or ''}', expected: '('")
                pos += 1
                vals: list[str] = []
                while True:
                    vals.append(value_or_empty())
                    tok = peek()
                    if tok == ",":
                        pos += 1
                        continue
                    if tok == ")":
                        pos += 1
                        break
                    raise fail(f"found '{tok or ''}', expected: ',', or ')'")
                if vals == [""]:
                    raise fail(f"for 'in', 'notin' operators, values set can't be empty: {key}")
                op, values = set_op, tuple(vals)
            elif tok in ("<", ">"):
                pos += 1
                val = ident("integer")
                try:
                    int(val)
                except ValueError:
                    raise fail(
                        f"for 'Gt', 'Lt' operators, the value must be an integer: {val}"
                    ) from None
                op, values = ("gt" if tok == ">" else "lt"), (val,)
            else:
                raise fail(f"found '{tok}', expected: in, notin, =, ==, !=, gt, lt")
        for problem in qualified_name_errors(key):
            raise bad_request(
                f'unable to parse requirement: key: Invalid value: "{key}": {problem}'
            )
        if op not in ("gt", "lt"):
            for val in values:
                for problem in label_value_errors(val):
                    raise bad_request(
                        f"unable to parse requirement: values[0][{key}]: Invalid value: "
                        f'"{val}": {problem}'
                    )
        reqs.append(Requirement(key, op, values))
        tok = peek()
        if tok is None:
            break
        if tok != ",":
            raise fail(f"found '{tok}', expected: ',' or 'end of string'")
        pos += 1
    return LabelSelector(tuple(reqs))


# --- field selectors -----------------------------------------------------------------------

FieldGetter = Callable[[dict[str, Any]], str]

FIELD_GETTERS: dict[str, FieldGetter] = {
    "metadata.name": lambda obj: obj.get("metadata", {}).get("name", ""),
    "metadata.namespace": lambda obj: obj.get("metadata", {}).get("namespace", ""),
}
NAMESPACE_FIELD_GETTERS: dict[str, FieldGetter] = {
    **FIELD_GETTERS,
    "status.phase": lambda obj: obj.get("status", {}).get("phase", ""),
}


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, str, str], ...] = ()  # (field, op, value)
    getters: tuple[FieldGetter, ...] = ()  # one per term: the getter of its field

    def matches(self, obj: dict[str, Any]) -> bool:
        for (_, op, value), get in zip(self.terms, self.getters, strict=True):
            if (get(obj) == value) != (op == "="):
                return False
        return True


def parse_field_selector(
    text: str | None, getters: dict[str, FieldGetter] | None = None
) -> FieldSelector:
    getters = getters or FIELD_GETTERS
    if not text or not text.strip():
        return FieldSelector()
    terms: list[tuple[str, str, str]] = []
    for part in _split_unescaped(text):
        part = part.strip()
        if not part:
            continue
        op = _field_operator(part)
        if op is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field_name, value = part.split(op, 1)
        op = "!=" if op == "!=" else "="
        field_name = field_name.strip()
        if field_name not in getters:
            raise bad_request(f"field label not supported: {field_name}")
        terms.append((field_name, op, value.replace("\\,", ",").replace("\\=", "=")))
    return FieldSelector(tuple(terms), tuple(getters[name] for name, _, _ in terms))


def _field_operator(term: str) -> str | None:
    for candidate in ("!=", "==", "="):
        if candidate in term:
            return candidate
    return None


def _split_unescaped(text: str) -> list[str]:
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
