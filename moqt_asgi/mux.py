"""TrackMux: what a session publishes, by broadcast path.

Handlers are registered per broadcast path; a SUBSCRIBE for that path (any
track name) runs the handler with a :class:`~.track.TrackWriter`. The mux also
answers announce requests: every registered path under the requested prefix
is announced, then changes are streamed as they happen.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from .paths import has_prefix, normalize_path
from .track import TrackWriter

logger = logging.getLogger("moqt_asgi.mux")

TrackHandler = Callable[[TrackWriter], Awaitable[None]]
"""Serves one subscription; the track ends (cleanly) when it returns."""


class Announcement:
    """The lifetime of one broadcast path being available."""

    def __init__(self, path: str, *, hops: tuple[int, ...] = ()) -> None:
        self.path = normalize_path(path)
        self.hops = hops
        """Hop ids of the relays this broadcast came through, origin first (``()`` for a local one)."""
        self._active = True
        self._ended: asyncio.Event | None = None
        self._callbacks: list[Callable[[Announcement], None]] = []

    def __repr__(self) -> str:
        return f"Announcement({self.path!r}, {'active' if self._active else 'ended'})"

    @property
    def active(self) -> bool:
        return self._active

    def end(self) -> None:
        """Withdraw the announcement; idempotent."""
        if not self._active:
            return
        self._active = False
        if self._ended is not None:
            self._ended.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def on_end(self, callback: Callable[[Announcement], None]) -> None:
        if not self._active:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def wait_ended(self) -> None:
        if not self._active:
            return
        if self._ended is None:
            self._ended = asyncio.Event()
        await self._ended.wait()


class AnnouncementWatcher:
    """Changes under one prefix, coalesced so a slow reader costs one entry per path."""

    def __init__(self, mux: TrackMux, prefix: str) -> None:
        self.prefix = normalize_path(prefix)
        self._mux = mux
        self._pending: dict[str, bool] = {}
        self._delivered: set[str] = set(mux.active_paths(self.prefix))
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def initial(self) -> list[str]:
        """The paths already active when the watch began."""
        return sorted(self._delivered)

    def _notify(self, path: str, active: bool) -> None:
        if self._closed or not has_prefix(path, self.prefix):
            return
        self._pending[path] = active
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> tuple[str, bool]:
        """The next change as ``(path, active)``."""
        while True:
            while self._pending:
                path = next(iter(self._pending))
                active = self._pending.pop(path)
                if active != (path in self._delivered):
                    (self._delivered.add if active else self._delivered.discard)(path)
                    return path, active
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._closed = True
        self._mux._watchers.discard(self)


class TrackMux:
    """Routes subscriptions by broadcast path and serves announcements by prefix."""

    def __init__(self, *, hop_id: int | None = None) -> None:
        self.hop_id = hop_id if hop_id is not None else secrets.randbits(52) | 1
        """This origin's id in announce hop lists (lite-04+): announcements carrying it are loops."""
        self._routes: dict[str, tuple[Announcement, TrackHandler]] = {}
        self._watchers: set[AnnouncementWatcher] = set()

    def publish(self, path: str, handler: TrackHandler) -> Announcement:
        """Serve ``path`` with ``handler``; returns the announcement (call ``end()`` to withdraw)."""
        announcement = Announcement(path)
        self.announce(announcement, handler)
        return announcement

    def announce(self, announcement: Announcement, handler: TrackHandler) -> None:
        """Register ``handler`` for ``announcement.path`` until the announcement ends."""
        if not announcement.active:
            return
        path = announcement.path
        previous = self._routes.get(path)
        self._routes[path] = (announcement, handler)
        if previous is not None:
            previous[0].end()  # replaced: its callback sees it is no longer current
        announcement.on_end(self._on_end)
        logger.debug("announce %r", path)
        for watcher in list(self._watchers):
            watcher._notify(path, True)

    def _on_end(self, announcement: Announcement) -> None:
        current = self._routes.get(announcement.path)
        if current is None or current[0] is not announcement:
            return
        del self._routes[announcement.path]
        logger.debug("unannounce %r", announcement.path)
        for watcher in list(self._watchers):
            watcher._notify(announcement.path, False)

    def unpublish(self, path: str) -> None:
        route = self._routes.get(normalize_path(path))
        if route is not None:
            route[0].end()

    def route(self, path: str) -> tuple[Announcement, TrackHandler] | None:
        return self._routes.get(normalize_path(path))

    def handler(self, path: str) -> TrackHandler | None:
        route = self.route(path)
        return route[1] if route else None

    def active_paths(self, prefix: str = "") -> list[str]:
        prefix = normalize_path(prefix)
        return [path for path in self._routes if has_prefix(path, prefix)]

    def watch(self, prefix: str = "") -> AnnouncementWatcher:
        watcher = AnnouncementWatcher(self, prefix)
        self._watchers.add(watcher)
        return watcher
