"""The setup request a handler decides on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .auth.tokens import Grant
from .engine.mux import TrackMux
from .engine.session import Session
from .protocol.errors import APPLICATION_CODE_BASE, ErrorCode, MoQError

Transport = Literal["quic", "webtransport", "websocket", "memory"]

_STATUS_CODES = {
    400: ErrorCode.PROTOCOL_VIOLATION,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    408: ErrorCode.TIMEOUT,
    505: ErrorCode.VERSION,
}


def status_to_code(status: int) -> int:
    """The MoQ close code for an HTTP-style rejection status (used on native QUIC)."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return APPLICATION_CODE_BASE + status


@dataclass(slots=True)
class Acceptor:
    """What a transport entrypoint supplies so a request can be answered."""

    accept: Callable[[SetupRequest, TrackMux], Awaitable[Session]]
    reject: Callable[[SetupRequest, int, str], Awaitable[None]]


@dataclass
class SetupRequest:
    """A peer asking to start a session. Call :meth:`accept` or :meth:`reject`."""

    path: str
    """URL path, without the query (``"/room/1"``); ``""`` when the peer sent none."""
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers, lower-case names (WebTransport only)."""
    origin: str | None = None
    client: tuple[str, int] | None = None
    versions: tuple[int, ...] = ()
    """Versions the peer offered."""
    transport: Transport = "quic"
    path_params: dict[str, Any] = field(default_factory=dict)
    """The route's path parameters, converted (``{n:int}`` gives an ``int``)."""
    grant: Grant | None = None
    """What the session may publish and read, once accepted (``None``: anything). The app's
    ``auth`` sets it from the ``?jwt=`` token; a handler may set or narrow it before :meth:`accept`."""
    early_data: bool = False
    """The setup arrived in 0-RTT early data, which an attacker can replay: accept only what is
    safe to do twice (see ``docs/security.md``)."""
    acceptor: Acceptor | None = field(default=None, repr=False)
    """How the transport entrypoint answers (``None``: a request that cannot be accepted, in tests)."""
    default_mux: TrackMux | None = field(default=None, repr=False)
    session: Session | None = field(default=None, repr=False)
    rejected_with: int | None = None

    @classmethod
    def from_target(cls, target: str | None, **kwargs: object) -> SetupRequest:
        """Build from a path that may carry ``?query``.

        A session that carries no path at all (lite-03/04 on native QUIC, or a
        client that sent none) is at the root, ``"/"``.
        """
        path, _, query = (target or "").partition("?")
        return cls(path=path or "/", query=query, **kwargs)  # type: ignore[arg-type]

    @property
    def decided(self) -> bool:
        return self.session is not None or self.rejected_with is not None

    async def accept(self, mux: TrackMux | None = None) -> Session:
        """Start the session, publishing what ``mux`` holds (default: the app's)."""
        if self.session is not None:
            return self.session
        if self.rejected_with is not None:
            raise MoQError("request was already rejected")
        if self.acceptor is None:
            raise MoQError("this request cannot be accepted (no transport attached)")
        if mux is None:
            mux = self.default_mux if self.default_mux is not None else TrackMux()
        self.session = await self.acceptor.accept(self, mux)
        return self.session

    async def reject(self, status: int = 403, reason: str = "") -> None:
        """Refuse the session with an HTTP-style ``status`` (403 forbidden, 404 not found...)."""
        if self.decided:
            raise MoQError("request was already decided")
        self.rejected_with = status
        if self.acceptor is not None:
            await self.acceptor.reject(self, status, reason)
