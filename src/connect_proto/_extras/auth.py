"""Bearer-token authentication as an interceptor.

Token file (YAML, or JSON, which YAML reads too)::

    tokens:
      - name: propeller                 # shown in logs as the principal; never the token
        token: "s3cr3t-value"           # the bearer token itself, or instead ...
        # sha256: "<hex sha256 of the token>"   # ... its digest, to keep secrets out
        allow:                          # fnmatch patterns over "/pkg.Service/Method"
          - "/flyteidl2.actions.ActionsService/*"
      - name: admin
        sha256: "9f86d08188..."
        allow: ["*"]

Outcomes: no ``authorization: Bearer ...`` header, or an unknown token ->
UNAUTHENTICATED; a known token without a pattern matching the method ->
PERMISSION_DENIED. Methods matching ``open_paths`` (health and reflection by default)
need no token. Plain ``http_routes`` never reach interceptors, so ``/healthz`` and
``/metrics`` stay open.

Presented tokens are hashed and compared with ``hmac.compare_digest`` against every
known digest, without stopping at a match, so timing reveals neither whether nor which
token matched (hashing first also hides the known tokens' lengths). Patterns are
resolved to the set of allowed routes at start-up (``bind``); a request does one set
lookup.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from connect_proto._context import RequestContext
from connect_proto._errors import Code, RpcError
from connect_proto._service import RpcRoute

DEFAULT_OPEN_PATHS: tuple[str, ...] = (
    "/grpc.health.v1.Health/*",
    "/grpc.reflection.v1.ServerReflection/*",
    "/grpc.reflection.v1alpha.ServerReflection/*",
)


class TokenFileError(ValueError):
    """The token file is missing, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One known token: a name for logs, the token's SHA-256, the methods it may call."""

    name: str
    digest: bytes
    allow: tuple[str, ...]

    @classmethod
    def from_token(cls, name: str, token: str, allow: Iterable[str]) -> TokenGrant:
        return cls(name, _digest(token), tuple(allow))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_token_file(text: str, source: str = "<tokens>") -> list[TokenGrant]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokenFileError(f"{source}: not YAML/JSON: {exc}") from None
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TokenFileError(f"{source}: expected a mapping with a 'tokens' list")
    grants: list[TokenGrant] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: tokens[{index}]"
        if not isinstance(entry, dict):
            raise TokenFileError(f"{where}: expected a mapping")
        name = entry.get("name")
        allow = entry.get("allow")
        token = entry.get("token")
        sha = entry.get("sha256")
        if not isinstance(name, str) or not name:
            raise TokenFileError(f"{where}: 'name' must be a non-empty string")
        if name in names:
            raise TokenFileError(f"{where}: duplicate name {name!r}")
        names.add(name)
        if not isinstance(allow, list) or not all(isinstance(p, str) and p for p in allow):
            raise TokenFileError(f"{where}: 'allow' must be a list of method patterns")
        if (token is None) == (sha is None):
            raise TokenFileError(f"{where}: give exactly one of 'token' and 'sha256'")
        if token is not None:
            if not isinstance(token, str) or not token:
                raise TokenFileError(f"{where}: 'token' must be a non-empty string")
            digest = _digest(token)
        else:
            try:
                digest = bytes.fromhex(sha) if isinstance(sha, str) else b""
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise TokenFileError(f"{where}: 'sha256' must be 64 hex digits")
        grants.append(TokenGrant(name, digest, tuple(allow)))
    return grants


def load_token_file(path: str | Path) -> list[TokenGrant]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"{path}: {exc.strerror or exc}") from None
    return parse_token_file(text, str(path))


def bearer_token(ctx: RequestContext) -> str | None:
    """The token of ``authorization: Bearer <token>`` (scheme case-insensitive), or None."""
    value = ctx.request_headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class BearerAuth:
    """The authenticating interceptor; sets ``ctx.principal`` to the token's name."""

    def __init__(
        self, grants: Sequence[TokenGrant], *, open_paths: Iterable[str] = DEFAULT_OPEN_PATHS
    ) -> None:
        self._grants = tuple(grants)
        self._open_patterns = tuple(open_paths)
        self._open: frozenset[str] = frozenset()
        # grant index -> paths it may call; filled by bind() from the route table.
        self._allowed: tuple[frozenset[str], ...] = tuple(frozenset() for _ in self._grants)
        self._bound = False

    @classmethod
    def from_file(
        cls, path: str | Path, *, open_paths: Iterable[str] = DEFAULT_OPEN_PATHS
    ) -> BearerAuth:
        return cls(load_token_file(path), open_paths=open_paths)

    def bind(self, routes: Mapping[str, RpcRoute]) -> None:
        paths = list(routes)
        self._open = frozenset(p for p in paths if _matches(p, self._open_patterns))
        self._allowed = tuple(
            frozenset(p for p in paths if _matches(p, g.allow)) for g in self._grants
        )
        self._bound = True

    def authenticate(self, token: str) -> int | None:
        """The index of the grant holding ``token``, or None. Constant time in the match."""
        presented = _digest(token)
        found = -1
        for index, grant in enumerate(self._grants):
            # No early exit: every digest is compared whatever the outcome.
            if hmac.compare_digest(presented, grant.digest):
                found = index
        return None if found < 0 else found

    async def intercept(self, route: RpcRoute, ctx: RequestContext) -> None:
        if not self._bound:
            raise RuntimeError("BearerAuth used before bind(): pass it to ConnectApp")
        path = route.path
        if path in self._open:
            return
        token = bearer_token(ctx)
        if token is None:
            raise RpcError(Code.UNAUTHENTICATED, "missing bearer token")
        index = self.authenticate(token)
        if index is None:
            raise RpcError(Code.UNAUTHENTICATED, "invalid bearer token")
        grant = self._grants[index]
        ctx.principal = grant.name
        if path not in self._allowed[index]:
            raise RpcError(Code.PERMISSION_DENIED, f"{grant.name} may not call {path}")


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


__all__ = [
    "DEFAULT_OPEN_PATHS",
    "BearerAuth",
    "TokenFileError",
    "TokenGrant",
    "bearer_token",
    "load_token_file",
    "parse_token_file",
]
