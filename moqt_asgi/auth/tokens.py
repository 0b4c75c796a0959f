"""JWT authorisation compatible with moq-relay and moq-token.

A client presents a token as the ``jwt`` query parameter of its connection URL
(WebTransport ``:path``, or the SETUP path parameter on native QUIC). The
token is a compact JWS whose payload says what may be published and
subscribed; :class:`Authenticator` turns the connection path plus query
string into a :class:`Grant` the server enforces for the whole session.

What we implement, read from moq-token 0.7 (``rs/moq-token``), moq-relay
0.14 (``rs/moq-relay/src/auth.rs``) and ``@moq/token`` on npm:

Claims
    ``root`` (string, default ``""``), ``put`` (publish) and ``get`` (subscribe),
    each a string or a list of strings (a string is a one-element list;
    missing or ``[]`` grants nothing in that role; ``""`` grants everything
    under the root), ``exp`` and ``iat`` as integer unix seconds (or null).
    ``pub``/``sub`` are *not* read: ``sub`` is JWT's subject, which is why the
    claims are called ``put``/``get``. Other claims are ignored. A token that
    grants neither role is refused.
Paths
    Slashes are implicit at the edges (``/a//b/`` is ``a/b``) and prefixes
    match on segment boundaries: ``foo`` covers ``foo`` and ``foo/bar`` but not
    ``foobar``.
Connection path
    It scopes the session and becomes :attr:`Grant.root`; the grant's prefixes
    are rebased onto it. Under the token's root it narrows the grant (prefixes
    outside it are dropped); a parent of the root keeps the token's root (it is
    prepended to every prefix); an unrelated path, or one where no prefix
    survives, is refused.
Time
    ``exp`` is checked with no leeway by default (expired once ``exp < now``),
    and :attr:`Grant.expires_at` carries it so the session can be closed then;
    ``iat`` is informational.
Keys
    One key file (``--auth-key``, read when loaded): every token is checked
    with it, whatever its ``kid``. A JWK set (``{"keys": [...]}``): the key named by ``kid``, or
    the only key when the token has no ``kid``. A key directory
    (``--auth-key-dir``): ``{kid}.jwk``, read when first needed and again when
    the file changes; ``kid`` is required. The header's ``alg`` must equal the
    key's; ``none`` and unknown algorithms are refused, and so is a key whose
    ``key_ops`` lacks ``verify``. A key's ``scope`` refuses whole tokens that
    reach past it.
Anonymous access
    Without a token, a public prefix (``--auth-public``) that overlaps the
    connection path, in either direction, gives publish and subscribe under
    that prefix. With a token, public access is not added (as moq-relay);
    combine grants with :meth:`Grant.union` if a server wants both.

Deliberate differences: a path outside the grant is 403 here (moq-relay
answers 401 for every failure); ``nbf`` is enforced when present (moq-relay
ignores it; moq-token never writes it); a token carrying ``aud`` is refused
(as moq-relay, which has no audience to match); ``crit`` headers are refused;
duplicate JSON members, non-integer times, and tokens over
:data:`MAX_TOKEN_LENGTH` are refused; a single key file is read once
(moq-relay rereads it for every connection); key URLs, the auth API and
subdomain routing are not supported. Connection paths are compared as given (no percent-decoding), as
moq-relay does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

from ..protocol.errors import MoQError
from ..protocol.paths import has_prefix, join_path, normalize_path
from .jwk import (
    ALGORITHMS,
    Key,
    Scope,
    b64url_decode,
    b64url_encode,
    generate_key,
    parse_json,
    public_jwk,
    read_key_file,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "AuthError",
    "Authenticator",
    "Claims",
    "Grant",
    "Key",
    "KeySet",
    "Scope",
    "generate_key",
    "grant_for",
    "public_jwk",
    "query_token",
    "sign_token",
]

log = logging.getLogger("moqt_asgi.auth")

MAX_TOKEN_LENGTH = 8192
"""Longer tokens are refused before anything is decoded."""
_INT64 = 2**63
_KID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_TOKEN_CHARS = _KID_CHARS | {"."}


class AuthError(MoQError):
    """A connection is refused: ``status`` 401 (no, bad or expired token) or 403 (valid token, path not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.status})"


def _strip(path: str, prefix: str) -> str | None:
    """``path`` below ``prefix`` (both normalised), or None when ``prefix`` does not cover it."""
    if not has_prefix(path, prefix):
        return None
    return path[len(prefix) + 1 :] if prefix and path != prefix else ("" if prefix else path)


def _collapse(paths: Iterable[str]) -> tuple[str, ...]:
    """Normalised, deduplicated prefixes with the covered ones dropped, shortest first (moq-net's PathPrefixes)."""
    ordered = sorted({normalize_path(path) for path in paths}, key=lambda path: (len(path), path))
    kept: list[str] = []
    for path in ordered:
        if not any(has_prefix(path, shorter) for shorter in kept):
            kept.append(path)
    return tuple(kept)


def _rescope(root: str, grants: Iterable[str], path: str) -> list[str] | None:
    """Prefixes granted under ``root``, rebased onto ``path``; None when the two do not overlap.

    moq-token's ``Claims::authorize``: a path under the root narrows each prefix
    (dropping those outside it), a parent of the root prepends what lies
    between them.
    """
    suffix, prefix = _strip(path, root), ""
    if suffix is None:
        above = _strip(root, path)
        if above is None:
            return None
        suffix, prefix = "", above
    out: list[str] = []
    for grant in grants:
        full = join_path(prefix, normalize_path(grant))
        remaining = _strip(full, suffix)
        if remaining is not None:
            out.append(remaining)
        elif has_prefix(suffix, full):
            out.append("")
    return out


@dataclass(frozen=True, slots=True)
class Grant:
    """What one session may do. Paths are broadcast paths RELATIVE TO ``root`` (as the session names them).

    ``publish``/``subscribe`` hold prefixes: ``("",)`` is everything under
    ``root``, ``()`` nothing. Inputs are normalised (slashes trimmed) and
    collapsed (a prefix covered by another is dropped).
    """

    root: str = ""
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    expires_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("publish", "subscribe"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"Grant.{name} is a tuple of prefixes, not a string")
        object.__setattr__(self, "root", normalize_path(self.root))
        object.__setattr__(self, "publish", _collapse(self.publish))
        object.__setattr__(self, "subscribe", _collapse(self.subscribe))

    @classmethod
    def everything(cls, root: str = "") -> Grant:
        """Publish and subscribe anything under ``root``, forever."""
        return cls(root, ("",), ("",))

    def can_publish(self, path: str) -> bool:
        """May the session publish the broadcast ``path`` (relative to :attr:`root`)?"""
        path = normalize_path(path)
        return any(has_prefix(path, prefix) for prefix in self.publish)

    def can_subscribe(self, path: str) -> bool:
        """May the session subscribe to the broadcast ``path`` (relative to :attr:`root`)?"""
        path = normalize_path(path)
        return any(has_prefix(path, prefix) for prefix in self.subscribe)

    def can_watch(self, prefix: str) -> bool:
        """Could anything under ``prefix`` be subscribed? (For announce requests: the grant and prefix overlap.)"""
        prefix = normalize_path(prefix)
        return any(has_prefix(prefix, granted) or has_prefix(granted, prefix) for granted in self.subscribe)

    def absolute(self, path: str) -> str:
        """``path`` joined under :attr:`root`: the broadcast's name in a mux shared by sessions with other roots."""
        return join_path(self.root, normalize_path(path))

    def union(self, other: Grant) -> Grant:
        """Everything either grant allows, seen from this grant's :attr:`root`.

        ``other`` is rebased onto ``self.root`` the way a token is rebased onto a
        connection path (narrowed when its root is above, prefixed when below;
        nothing of it is kept when the roots are unrelated). The result expires
        at the earlier of the two expiry times, so a session holding a token's
        rights never outlives the token.
        """
        rebased = (_rescope(other.root, other.publish, self.root), _rescope(other.root, other.subscribe, self.root))
        expiries = [at for at in (self.expires_at, other.expires_at) if at is not None]
        return Grant(self.root, (*self.publish, *(rebased[0] or ())), (*self.subscribe, *(rebased[1] or ())),
                     min(expiries) if expiries else None)

    @property
    def empty(self) -> bool:
        """Neither publish nor subscribe is allowed anywhere."""
        return not self.publish and not self.subscribe


def _claim_list(payload: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = payload.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"claim {name!r} must be a string or a list of strings")
    return tuple(value)


def _claim_time(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if type(value) is not int or not -_INT64 <= value < _INT64:
        raise ValueError(f"claim {name!r} must be integer unix seconds")
    return float(value)


def _check_text(*texts: str) -> None:
    for text in texts:
        text.encode("utf-8")  # a lone surrogate from a \\ud800 escape raises here


@dataclass(frozen=True)
class Claims:
    """A verified token's payload, in moq-token's terms (``put`` = publish, ``get`` = subscribe)."""

    root: str
    put: tuple[str, ...]
    get: tuple[str, ...]
    exp: float | None
    iat: float | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_payload(cls, payload: Any) -> Claims:
        """Read the claims moq-token knows; :class:`ValueError` for a wrong type or a token that grants nothing."""
        if not isinstance(payload, dict):
            raise ValueError("the payload must be a JSON object")
        root = payload.get("root", "")
        if not isinstance(root, str):
            raise ValueError("claim 'root' must be a string")
        put, get = _claim_list(payload, "put"), _claim_list(payload, "get")
        _check_text(root, *put, *get)
        claims = cls(root, put, get, _claim_time(payload, "exp"), _claim_time(payload, "iat"), MappingProxyType(payload))
        if not claims.put and not claims.get:
            raise ValueError("the token grants neither publish nor subscribe")
        return claims

    def authorize(self, path: str) -> Grant:
        """The grant at connection ``path``; :class:`AuthError` 403 when the path is outside it."""
        return grant_for(self, path)


def grant_for(claims: Claims, path: str) -> Grant:
    """Scope ``claims`` to the connection ``path`` as moq-relay does; raises :class:`AuthError` (403)."""
    target, root = normalize_path(path), normalize_path(claims.root)
    publish, subscribe = _rescope(root, claims.put, target), _rescope(root, claims.get, target)
    if publish is None or subscribe is None:
        raise AuthError(403, f"path {target!r} is outside the token's root {root!r}")
    grant = Grant(target, tuple(publish), tuple(subscribe), claims.exp)
    if grant.empty:
        raise AuthError(403, f"the token grants nothing at path {target!r}")
    return grant


class KeySet:
    """The keys tokens are checked with: one key file, a JWK set, or a ``{kid}.jwk`` directory."""

    def __init__(self, keys: Iterable[Key] = (), *, single: bool = False) -> None:
        self.keys: tuple[Key, ...] = tuple(keys)
        self.single = single
        """One key that checks every token, whatever its ``kid`` (moq-relay's ``--auth-key``)."""
        if single and len(self.keys) != 1:
            raise ValueError("a single-key set holds exactly one key")
        self.directory: Path | None = None
        self._cache: dict[str, tuple[tuple[int, int, int], Key]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeySet:
        """One JWK (JSON or base64url JSON, used for every token) or a JWK set ``{"keys": [...]}``."""
        text = read_key_file(path, limit=4 * 1024 * 1024)
        stripped = text.strip()
        if stripped.startswith("{"):
            data = parse_json(stripped)
            if isinstance(data, dict) and "keys" in data:
                if not isinstance(data["keys"], list):
                    raise ValueError("a JWK set's keys must be a list")
                return cls(Key.from_dict(item) for item in data["keys"])
        return cls([Key.from_str(text)], single=True)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> KeySet:
        """A directory of ``{kid}.jwk`` files, looked up by each token's ``kid`` (moq-relay's ``--auth-key-dir``)."""
        directory = Path(path)
        if not directory.is_dir():
            raise ValueError(f"{os.fspath(path)!r} is not a directory")
        keys = cls()
        keys.directory = directory
        return keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def key_for(self, kid: str | None) -> Key:
        """The key a token with this ``kid`` header is checked with; :class:`AuthError` 401 when there is none."""
        if self.single:
            return self.keys[0]
        if self.directory is not None:
            return self._from_directory(self.directory, kid)
        if kid is None:
            if len(self.keys) == 1:
                return self.keys[0]
            raise AuthError(401, "the token names no key (kid) and there are several")
        for key in self.keys:
            if key.kid == kid:
                return key
        raise AuthError(401, "no key matches the token's kid")

    def _from_directory(self, directory: Path, kid: str | None) -> Key:
        if kid is None:
            raise AuthError(401, "the token names no key (kid)")
        if not 0 < len(kid) <= 128 or not set(kid) <= _KID_CHARS:
            raise AuthError(401, "the token's kid is not a valid key name")
        path = directory / f"{kid}.jwk"
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            cached = self._cache.get(kid)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            key = Key.from_file(path)
        except FileNotFoundError:
            raise AuthError(401, "no key matches the token's kid") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("key file %s is unusable: %s", path, exc)
            raise AuthError(401, "no key matches the token's kid") from None
        if len(self._cache) >= 1024:
            self._cache.clear()
        self._cache[kid] = (stamp, key)
        return key

    def verify(self, token: str, *, now: float | None = None, leeway: float = 0) -> Claims:
        """Check a compact JWS token and return its claims; raises :class:`AuthError` (401) and nothing else.

        ``now`` defaults to the wall clock; ``leeway`` seconds are allowed on
        ``exp`` and ``nbf``.
        """
        try:
            return self._verify(token, time.time() if now is None else now, leeway)
        except AuthError:
            raise
        except Exception as exc:  # hostile input must never surface as anything else
            raise AuthError(401, f"malformed token: {exc}") from None

    def _verify(self, token: str, now: float, leeway: float) -> Claims:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(401, "token missing or too long")
        if not set(token) <= _TOKEN_CHARS or token.count(".") != 2:
            raise AuthError(401, "not a compact JWS token")
        encoded_header, encoded_payload, encoded_signature = token.split(".")
        try:
            header = parse_json(b64url_decode(encoded_header))
        except ValueError:
            raise AuthError(401, "malformed token header") from None
        if not isinstance(header, dict):
            raise AuthError(401, "malformed token header")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise AuthError(401, f"token algorithm {alg!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise AuthError(401, "malformed token kid")
        if "crit" in header:
            raise AuthError(401, "critical header extensions are not supported")
        key = self.key_for(kid)
        if alg != key.alg:
            raise AuthError(401, f"token algorithm {alg} does not match the key's {key.alg}")
        if "verify" not in key.key_ops:
            raise AuthError(401, "the key may not verify")
        try:
            signature = b64url_decode(encoded_signature)
        except ValueError:
            raise AuthError(401, "malformed token signature") from None
        if not key.verify(f"{encoded_header}.{encoded_payload}".encode("ascii"), signature):
            raise AuthError(401, "bad token signature")
        try:
            payload = parse_json(b64url_decode(encoded_payload))
            claims = Claims.from_payload(payload)
            nbf = _claim_time(payload, "nbf")
        except (ValueError, UnicodeError) as exc:
            raise AuthError(401, f"malformed token claims: {exc}") from None
        if payload.get("aud") is not None:
            raise AuthError(401, "the token is meant for another audience")
        if claims.exp is not None and claims.exp + leeway < now:
            raise AuthError(401, "the token has expired")
        if nbf is not None and nbf - leeway > now:
            raise AuthError(401, "the token is not valid yet")
        if key.scope is not None and not key.scope.allows(claims.root, claims.put, claims.get):
            raise AuthError(401, "the token grants more than its key's scope")
        return claims


def sign_token(key: Mapping[str, Any] | Key, claims: Mapping[str, Any]) -> str:
    """A compact JWS of ``claims`` signed with ``key`` (a private JWK), as ``moq-token sign`` makes.

    The header is ``{"typ": "JWT", "alg": ..., "kid": ...}`` (``kid`` when the
    key has one). The claims are checked as a verifier would (types, at least
    one of ``put``/``get``, the key's scope) and written as given, compactly;
    :class:`ValueError` when they would not verify or the key cannot sign.
    """
    signer = key if isinstance(key, Key) else Key.from_dict(key)
    parsed = Claims.from_payload(dict(claims))
    if signer.scope is not None and not signer.scope.allows(parsed.root, parsed.put, parsed.get):
        raise ValueError("the claims grant more than the key's scope")
    header: dict[str, Any] = {"typ": "JWT", "alg": signer.alg}
    if signer.kid is not None:
        header["kid"] = signer.kid

    def part(value: Mapping[str, Any]) -> str:
        return b64url_encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))

    signing_input = f"{part(header)}.{part(dict(claims))}"
    return f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode('ascii')))}"


def query_token(query: str) -> str | None:
    """The last non-empty ``jwt`` parameter of a raw query string, form-decoded (moq-relay's rule)."""
    token = None
    for part in query.removeprefix("?").split("&"):
        name, _, value = part.partition("=")
        if value and unquote_plus(name) == "jwt":
            token = unquote_plus(value)
    return token


class Authenticator:
    """Decides a :class:`Grant` for a connection path + query string, as moq-relay does.

    ``keys`` None accepts no token (a connection presenting one is refused).
    ``public`` is an anonymous prefix for publish and subscribe, like
    ``--auth-public`` (``""`` makes everything public); ``public_publish`` and
    ``public_subscribe`` add a prefix for one role only. ``leeway`` seconds are
    allowed on ``exp``/``nbf``.
    """

    def __init__(self, keys: KeySet | None = None, *, public: str | None = None, public_publish: str | None = None,
                 public_subscribe: str | None = None, leeway: float = 0) -> None:
        self.keys = keys
        self.leeway = leeway
        self.public_publish = _collapse(prefix for prefix in (public, public_publish) if prefix is not None)
        self.public_subscribe = _collapse(prefix for prefix in (public, public_subscribe) if prefix is not None)
        if "" in self.public_publish or "" in self.public_subscribe:
            log.warning("anonymous access to every path is enabled")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Authenticator | None:
        """Configure from moq-relay's variables; None when none is set (an open server).

        ``MOQ_AUTH_KEY``: a JWK or JWK-set file, or a ``{kid}.jwk`` directory
        (``MOQ_AUTH_KEY_DIR`` names a directory too). ``MOQ_AUTH_PUBLIC``: the
        anonymous prefix (empty: everything); ``MOQ_AUTH_PUBLIC_PUBLISH`` and
        ``MOQ_AUTH_PUBLIC_SUBSCRIBE``: one role only. Raises :class:`ValueError`
        for a key that cannot be loaded.
        """
        key, key_dir = environ.get("MOQ_AUTH_KEY") or None, environ.get("MOQ_AUTH_KEY_DIR") or None
        public = {name: environ.get(f"MOQ_AUTH_{name}") for name in ("PUBLIC", "PUBLIC_PUBLISH", "PUBLIC_SUBSCRIBE")}
        if key is None and key_dir is None and all(value is None for value in public.values()):
            return None
        if key is not None and key_dir is not None:
            raise ValueError("set MOQ_AUTH_KEY or MOQ_AUTH_KEY_DIR, not both")
        keys = None
        if key_dir is not None:
            keys = KeySet.from_dir(key_dir)
        elif key is not None:
            keys = KeySet.from_dir(key) if Path(key).is_dir() else KeySet.from_file(key)
        return cls(keys, public=public["PUBLIC"], public_publish=public["PUBLIC_PUBLISH"],
                   public_subscribe=public["PUBLIC_SUBSCRIBE"])

    def authorize(self, path: str, query: str, *, now: float | None = None) -> Grant:
        """The grant for a connection to ``path`` (URL path) with raw ``query`` (its ``jwt`` parameter is the token).

        Raises :class:`AuthError`: 401 for a missing, bad or expired token (when
        no public access applies), 403 for a path outside the token's grant.
        """
        target = normalize_path(path)
        token = query_token(query)
        if token is not None:
            if self.keys is None:
                raise AuthError(401, "this server accepts no tokens")
            try:
                claims = self.keys.verify(token, now=now, leeway=self.leeway)
            except AuthError as exc:
                log.debug("token refused for %r: %s", target, exc.message)
                raise
            return grant_for(claims, path)
        public = (*self.public_publish, *self.public_subscribe)
        if any(has_prefix(target, prefix) or has_prefix(prefix, target) for prefix in public):
            return grant_for(Claims("", self.public_publish, self.public_subscribe, None, None), path)
        raise AuthError(401, "a token is required")
