"""The HTTP side of a MoQ app: the plain requests moq-relay answers beside its sessions.

A :class:`~moqt_asgi.app.MoQ` answers these ``http`` scopes itself and passes
every other request to its inner ``app`` (404 without one):

``GET /certificate.sha256``
    The SHA-256 of the QUIC/WebTransport server's certificate (DER), as
    exactly 64 lowercase hex characters with no newline, for clients given
    an ``http://host:port/`` URL (``@moq/net``, moq-rs): they fetch it over
    TCP at the QUIC port's number and pin it. 404 ``no certificate`` until the
    app knows its certificate (:meth:`MoQ.set_certificate
    <moqt_asgi.app.MoQ.set_certificate>`; ``serve`` and Hypercorn tell it).
``GET /health``
    200 ``ok`` and a newline: a liveness probe.
``GET /announced`` and ``GET /announced/<prefix>``
    The broadcasts announced in the app's mux under ``prefix``, relative to
    it, one per line with no trailing newline (empty when there are none).
``GET /fetch/<broadcast>/<track>[?group=N|latest]``
    The frames of one finished group of a track, concatenated with no
    framing: the newest finished group by default. The broadcast must be
    published in the app's mux by a handler that answers FETCH (a
    :class:`~moqt_asgi.producer.Broadcast` or a relayed broadcast). Groups
    over :attr:`HttpEndpoints.max_fetch_bytes` are refused (413), never
    buffered; the group served is named in the ``moq-group`` header.

``/announced`` and ``/fetch`` are behind the app's own rules for sessions:
its origin policy (403) and its :class:`~moqt_asgi.auth.Authenticator`
(``?jwt=``; 401/403), with the path (the prefix, or the broadcast) standing
for the session's path, and they need subscribe rights on what they show.
``/certificate.sha256`` and ``/health`` are public, as on moq-relay.

CORS: responses to a request with an ``Origin`` carry
``Access-Control-Allow-Origin`` (``*``, or the request's origin when the app
restricts origins); ``OPTIONS`` preflights are answered for these paths.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .auth.tokens import Grant
from .engine.mux import TrackMux
from .producer import Broadcast, FetchedGroup
from .protocol.paths import normalize_path, strip_prefix
from .routing import OriginCheck
from .types import Receive, Scope, Send

logger = logging.getLogger("moqt_asgi.http")

CERTIFICATE_PATH = "/certificate.sha256"
HEALTH_PATH = "/health"
ANNOUNCED_PATH = "/announced"
FETCH_PATH = "/fetch"
DEFAULT_MAX_FETCH_BYTES = 16 * 1024 * 1024
TEXT = b"text/plain; charset=utf-8"

CertificateSource = bytes | str | os.PathLike[str] | x509.Certificate
"""A certificate: PEM or DER bytes, PEM text, the path of a PEM or DER file, or a loaded ``x509.Certificate``.

Of a PEM chain, the first certificate (the leaf) counts.
"""


def certificate_der(source: CertificateSource) -> bytes:
    """The DER encoding of ``source``'s first certificate. Raises :class:`ValueError` for anything else."""
    if isinstance(source, x509.Certificate):
        return source.public_bytes(Encoding.DER)
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        data = source.encode("ascii", "replace")
    else:
        data = Path(source).read_bytes()
    try:
        if b"-----BEGIN" in data[:4096]:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError as exc:
        raise ValueError(f"not an X.509 certificate (PEM or DER): {exc}") from None


def certificate_sha256(source: CertificateSource) -> str:
    """The lowercase hex SHA-256 of ``source``'s DER: what ``/certificate.sha256`` serves."""
    return hashlib.sha256(certificate_der(source)).hexdigest()


@dataclass(frozen=True, slots=True)
class HttpEndpoints:
    """Which HTTP endpoints a :class:`~moqt_asgi.app.MoQ` answers itself (all by default), and their bounds.

    ``MoQ(http_endpoints=False)`` turns them all off (every request goes to
    the inner app); ``HttpEndpoints(fetch=False)`` one of them.
    """

    certificate: bool = True
    """``GET /certificate.sha256``."""
    health: bool = True
    """``GET /health``."""
    announced: bool = True
    """``GET /announced[/<prefix>]``."""
    fetch: bool = True
    """``GET /fetch/<broadcast>/<track>``."""
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES
    """Largest group ``/fetch`` serves; a larger one is refused with 413."""
    fetch_timeout: float = 30.0
    """Seconds a ``/fetch`` may wait for a relayed group from upstream (then 504)."""

    @classmethod
    def of(cls, option: bool | HttpEndpoints) -> HttpEndpoints:
        """``True``: every endpoint; ``False``: none; an :class:`HttpEndpoints` as it is."""
        if isinstance(option, HttpEndpoints):
            return option
        return cls() if option else cls(certificate=False, health=False, announced=False, fetch=False)


class HttpHost(Protocol):
    """What the endpoints need of the app (:class:`~moqt_asgi.app.MoQ` is one)."""

    mux: TrackMux
    allow_origins: OriginCheck

    @property
    def certificate_sha256(self) -> str | None: ...

    def check_access(self, path: str, query: str, origin: str | None) -> tuple[int, str, Grant | None]: ...


@runtime_checkable
class FetchSource(Protocol):
    """A track handler that answers FETCH (:class:`~moqt_asgi.producer.Broadcast`, a relayed broadcast)."""

    async def fetch_group(self, track: str, sequence: int) -> FetchedGroup | None: ...


@runtime_checkable
class LatestGroupSource(Protocol):
    """A track handler that can name a track's newest finished group (for ``/fetch`` without ``?group=``)."""

    def latest_group(self, track: str) -> int | None: ...


@dataclass(slots=True)
class Response:
    """One plain HTTP answer."""

    status: int
    body: bytes = b""
    content_type: bytes | None = TEXT
    headers: tuple[tuple[bytes, bytes], ...] = ()
    parts: tuple[bytes, ...] = ()
    """A body sent in these pieces instead of :attr:`body` (a group's frames, sent as they are cached)."""

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lowercase name (repeated ones joined with ``", "``)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class HttpEndpointHandler:
    """Answers the endpoints of one app (see the module docstring)."""

    def __init__(self, host: HttpHost, endpoints: HttpEndpoints,
                 on_response: Callable[[str, int], None] | None = None) -> None:
        self.host = host
        self.endpoints = endpoints
        self.on_response = on_response
        """Called with ``(endpoint, status)`` for each answer (metrics)."""

    def endpoint_of(self, path: str) -> str | None:
        """Which enabled endpoint ``path`` is (``"certificate"``, ``"health"``, ``"announced"``, ``"fetch"``)."""
        endpoints = self.endpoints
        if path == CERTIFICATE_PATH and endpoints.certificate:
            return "certificate"
        if path == HEALTH_PATH and endpoints.health:
            return "health"
        if endpoints.announced and (path == ANNOUNCED_PATH or path.startswith(ANNOUNCED_PATH + "/")):
            return "announced"
        if endpoints.fetch and path.startswith(FETCH_PATH + "/"):
            return "fetch"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer ``scope`` if it is one of the endpoints; ``False`` (nothing sent) if it is not."""
        path = scope.get("path") or "/"
        endpoint = self.endpoint_of(path)
        if endpoint is None:
            return False
        headers = request_headers(scope)
        origin = headers.get("origin")
        method = scope.get("method", "GET")
        public = endpoint in ("certificate", "health")
        if method == "OPTIONS":
            response = self._preflight(headers, public)
        elif method not in ("GET", "HEAD"):
            response = Response(405, b"method not allowed\n", headers=((b"allow", b"GET, HEAD, OPTIONS"),))
        else:
            query = scope.get("query_string", b"").decode("latin-1")
            try:
                response = await self._answer(endpoint, path, query, origin)
            except Exception:
                logger.exception("%s %s failed", method, path)
                response = Response(500, b"internal error\n")
        await self._send(send, response, self._cors(origin, public), head=method == "HEAD")
        if self.on_response is not None:
            self.on_response(endpoint, response.status)
        return True

    # -- the endpoints
    async def _answer(self, endpoint: str, path: str, query: str, origin: str | None) -> Response:
        if endpoint == "health":
            return Response(200, b"ok\n")
        if endpoint == "certificate":
            digest = self.host.certificate_sha256
            if digest is None:
                return Response(404, b"no certificate\n")
            return Response(200, digest.encode("ascii"))
        if endpoint == "announced":
            return self._announced(path[len(ANNOUNCED_PATH):], query, origin)
        return await self._fetch(path[len(FETCH_PATH) + 1:], query, origin)

    def _access(self, path: str, query: str, origin: str | None) -> tuple[Response | None, Grant | None]:
        status, reason, grant = self.host.check_access(path, query, origin)
        if status:
            logger.info("HTTP request for %r refused (%d): %s", path, status, reason)
            return Response(status, f"{reason}\n".encode()), None
        return None, grant

    def _announced(self, prefix: str, query: str, origin: str | None) -> Response:
        prefix = normalize_path(prefix)
        refusal, grant = self._access("/" + prefix, query, origin)
        if refusal is not None:
            return refusal
        if grant is not None and not grant.subscribe:
            return Response(401, b"no subscribe rights\n")
        mux = self.host.mux
        found = sorted(strip_prefix(path, prefix) for path in mux.active_paths(prefix))
        if grant is not None:
            found = [path for path in found if grant.can_subscribe(path)]
        return Response(200, "\n".join(found).encode())

    async def _fetch(self, target: str, query: str, origin: str | None) -> Response:
        broadcast, _, track = normalize_path(target).rpartition("/")
        if not broadcast or not track:
            return Response(400, b"expected /fetch/<broadcast>/<track>\n")
        params = parse_qs(query, keep_blank_values=True)
        wanted = (params.get("group") or ["latest"])[-1]
        sequence: int | None = None
        if wanted != "latest":
            if not wanted.isdigit() or len(wanted) > 20:
                return Response(400, f"invalid group value: {wanted[:40]}\n".encode())
            sequence = int(wanted)
        refusal, grant = self._access("/" + broadcast, query, origin)
        if refusal is not None:
            return refusal
        if grant is not None and not grant.can_subscribe(""):
            return Response(401, b"no subscribe rights\n")
        route = self.host.mux.route(broadcast)
        handler = route[1] if route is not None else None
        if handler is None:
            return Response(404, b"no such broadcast\n")
        if not isinstance(handler, FetchSource):
            return Response(404, b"this broadcast does not answer fetches\n")
        if sequence is None:
            sequence = latest_group(handler, track)
            if sequence is None:
                return Response(404, b"no finished group\n")
        limit = self.endpoints.max_fetch_bytes
        size = cached_group_size(handler, track, sequence)
        if size is not None and size > limit:
            return _too_large(broadcast, track, sequence, size, limit)
        try:
            async with asyncio.timeout(self.endpoints.fetch_timeout):
                frames = await handler.fetch_group(track, sequence)
        except TimeoutError:
            return Response(504, b"timed out\n")
        if frames is None:
            return Response(404, b"no such group\n")
        size = sum(len(payload) for payload, _ in frames)
        if size > limit:
            return _too_large(broadcast, track, sequence, size, limit)
        return Response(200, content_type=None, headers=((b"moq-group", str(sequence).encode()),),
                        parts=tuple(payload for payload, _ in frames))

    # -- CORS and sending
    def _cors(self, origin: str | None, public: bool) -> list[tuple[bytes, bytes]]:
        if origin is None:
            return []
        if public or self.host.allow_origins is None:
            return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"moq-group")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin"),
                (b"access-control-expose-headers", b"moq-group")]

    def _preflight(self, headers: Mapping[str, str], public: bool) -> Response:
        extra = [(b"access-control-allow-methods", b"GET, HEAD"), (b"access-control-max-age", b"86400")]
        if requested := headers.get("access-control-request-headers"):
            extra.append((b"access-control-allow-headers", requested.encode("latin-1")))
        if public and headers.get("access-control-request-private-network") == "true":
            extra.append((b"access-control-allow-private-network", b"true"))
        return Response(204, content_type=None, headers=tuple(extra))

    @staticmethod
    async def _send(send: Send, response: Response, cors: list[tuple[bytes, bytes]], *, head: bool) -> None:
        parts = response.parts or (response.body,)
        headers: list[tuple[bytes, bytes]] = [(b"content-length", str(sum(map(len, parts))).encode()),
                                              (b"cache-control", b"no-store")]
        if response.content_type is not None:
            headers.append((b"content-type", response.content_type))
        headers += [*response.headers, *cors]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        for index, part in enumerate(parts):  # the cached payloads themselves: no copy of the group is made
            await send({"type": "http.response.body", "body": part, "more_body": index < len(parts) - 1})


def _too_large(broadcast: str, track: str, sequence: int, size: int, limit: int) -> Response:
    logger.info("not serving %s/%s group %d over HTTP: %d bytes (the limit is %d)", broadcast, track, sequence, size,
                limit)
    return Response(413, f"group {sequence} holds {size} bytes; the limit is {limit}\n".encode())


def latest_group(handler: object, track: str) -> int | None:
    """The newest finished group of ``track`` that ``handler`` holds, or ``None``."""
    if isinstance(handler, LatestGroupSource):
        return handler.latest_group(track)
    return None


def cached_group_size(handler: object, track: str, sequence: int) -> int | None:
    """The size of a group ``handler`` holds, when it can tell before copying it (a local :class:`Broadcast`)."""
    if isinstance(handler, Broadcast):
        producer = handler.tracks.get(track)
        group = producer.group(sequence) if producer is not None else None
        return group.size if group is not None else None
    return None


__all__ = [
    "CERTIFICATE_PATH",
    "DEFAULT_MAX_FETCH_BYTES",
    "CertificateSource",
    "FetchSource",
    "HttpEndpointHandler",
    "HttpEndpoints",
    "HttpHost",
    "LatestGroupSource",
    "certificate_der",
    "certificate_sha256",
    "latest_group",
]
