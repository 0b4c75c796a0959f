"""Types shared by the application surface: ASGI aliases, hooks, and what serving needs of an app.

Defined once here (as Starlette's ``types.py``), so that the modules that use
them need not import each other: :mod:`moqt_asgi.serving` serves any
:class:`SetupApp` (a :class:`~moqt_asgi.app.MoQ` is one) without importing
the app module that calls it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from .engine.session import Session
from .protocol.limits import Limits
from .protocol.versions import Version
from .request import SetupRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SessionHook = Callable[[Session], None]
"""Called with each session a server accepts (a registry, a GOAWAY on shutdown...)."""

SetupHandler = Callable[[SetupRequest], Awaitable[None]]
"""Decides one setup request: ``await request.accept()`` or ``await request.reject(status)``."""


class SetupApp(Protocol):
    """What serving one connection needs of an application (:class:`~moqt_asgi.app.MoQ` is one)."""

    versions: tuple[Version, ...]
    limits: Limits
    setup_handler_timeout: float

    async def handle_setup(self, request: SetupRequest) -> None: ...

    def admit(self, client: tuple[str, int] | None) -> str | None: ...

    def release(self, client: tuple[str, int] | None) -> None: ...


__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "SessionHook", "SetupApp", "SetupHandler"]
