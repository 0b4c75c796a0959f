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

from ..protocol.paths import has_prefix, join_path, normalize_path, strip_prefix
from .track import TrackWriter

logger = logging.getLogger("moqt_asgi.engine.mux")

TrackHandler = Callable[[TrackWriter], Awaitable[None]]
"""Serves one subscription; the track ends (cleanly) when it returns."""


class Announcement:
    """The lifetime of one broadcast path being available."""

    def __init__(self, path: str, *, hops: tuple[int, ...] = ()) -> None:
        self.path = normalize_path(path)
        self.hops = hops
        """Hop ids of the relays this broadcast came through, origin first (``()`` for a local one)."""
        self.error: int | None = None
        """Why it ended, when not cleanly: the publisher was lost (its session failed), say."""
        self._active = True
        self._ended: asyncio.Event | None = None
        self._callbacks: list[Callable[[Announcement], None]] = []

    def __repr__(self) -> str:
        return f"Announcement({self.path!r}, {'active' if self._active else 'ended'})"

    @property
    def active(self) -> bool:
        return self._active

    def end(self, error: int | None = None) -> None:
        """Withdraw the announcement (``error``: not cleanly, with that code); idempotent."""
        if not self._active:
            return
        self._active = False
        self.error = error
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
    """Changes under one prefix, coalesced so a slow reader costs one entry per path.

    Paths are reported relative to the view it was made from (see
    :meth:`TrackMux.scoped`).
    """

    def __init__(self, mux: TrackMux, prefix: str) -> None:
        self._root = mux.root
        self.prefix = join_path(self._root, normalize_path(prefix))
        self._watchers = mux._watchers
        self._pending: dict[str, bool] = {}
        self._delivered: set[str] = {path for path in mux._routes if has_prefix(path, self.prefix)}
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def initial(self) -> list[str]:
        """The paths already active when the watch began."""
        return sorted(strip_prefix(path, self._root) for path in self._delivered)

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
                    return strip_prefix(path, self._root), active
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._closed = True
        self._watchers.discard(self)


Route = tuple[Announcement, TrackHandler]


class TrackMux:
    """Routes subscriptions by broadcast path and serves announcements by prefix.

    Two publications of one path: the newer serves new subscriptions and the
    older stays as a backup, serving the subscriptions it already has; when
    the newer ends, the older is current again (moq-lite's origin does the
    same). A path is withdrawn only when its last publication ends.

    :meth:`scoped` gives a view of the same tables under a root path, as a
    session with a token's ``root`` sees them.
    """

    def __init__(self, *, hop_id: int | None = None) -> None:
        self.hop_id = hop_id if hop_id is not None else secrets.randbits(52) | 1
        """This origin's id in announce hop lists (lite-04+): announcements carrying it are loops."""
        self.root = ""
        """Where this view's paths start in the shared tables (``""`` for the mux itself)."""
        self._routes: dict[str, Route] = {}
        self._backups: dict[str, list[Route]] = {}
        self._watchers: set[AnnouncementWatcher] = set()

    def scoped(self, root: str) -> TrackMux:
        """A view of this mux in which every path is relative to ``root``."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.root = join_path(self.root, normalize_path(root))
        return view

    def _abs(self, path: str) -> str:
        return join_path(self.root, normalize_path(path))

    def publish(self, path: str, handler: TrackHandler) -> Announcement:
        """Serve ``path`` with ``handler``; returns the announcement (call ``end()`` to withdraw)."""
        announcement = Announcement(self._abs(path))
        self._add(announcement.path, announcement, handler, backup=False)
        return announcement

    def announce(self, announcement: Announcement, handler: TrackHandler, *, backup: bool = False) -> None:
        """Register ``handler`` for ``announcement.path`` until the announcement ends.

        It takes over from a current publication of the path, which becomes
        its backup; with ``backup`` it goes behind the current one instead.
        """
        self._add(self._abs(announcement.path), announcement, handler, backup=backup)

    def _add(self, path: str, announcement: Announcement, handler: TrackHandler, *, backup: bool) -> None:
        if not announcement.active:
            return
        current = self._routes.get(path)
        if current is None:
            self._routes[path] = (announcement, handler)
            logger.debug("announce %r", path)
            for watcher in list(self._watchers):
                watcher._notify(path, True)
        elif backup:
            self._backups.setdefault(path, []).insert(0, (announcement, handler))
        else:
            self._backups.setdefault(path, []).append(current)
            self._routes[path] = (announcement, handler)
            logger.debug("announce %r: takes over; the previous publication is kept as a backup", path)
        announcement.on_end(lambda ended: self._on_end(path, ended))

    def _on_end(self, path: str, announcement: Announcement) -> None:
        current = self._routes.get(path)
        backups = self._backups.get(path, [])
        if current is None or current[0] is not announcement:
            self._backups[path] = [route for route in backups if route[0] is not announcement]
            if not self._backups[path]:
                del self._backups[path]
            return
        while backups:
            candidate = backups.pop()
            if candidate[0].active:
                self._routes[path] = candidate
                if not backups:
                    self._backups.pop(path, None)
                logger.debug("announce %r: back to the previous publication", path)
                return
        self._backups.pop(path, None)
        del self._routes[path]
        logger.debug("unannounce %r", path)
        for watcher in list(self._watchers):
            watcher._notify(path, False)

    def unpublish(self, path: str) -> None:
        """Withdraw ``path``: every publication of it ends."""
        key = self._abs(path)
        for announcement, _ in [*self._backups.get(key, ()), *([self._routes[key]] if key in self._routes else [])]:
            announcement.end()

    def route(self, path: str) -> Route | None:
        return self._routes.get(self._abs(path))

    def publications(self, path: str) -> int:
        """How many publications of ``path`` there are (the current one and its backups)."""
        key = self._abs(path)
        return (key in self._routes) + len(self._backups.get(key, ()))

    def handler(self, path: str) -> TrackHandler | None:
        route = self.route(path)
        return route[1] if route else None

    def active_paths(self, prefix: str = "") -> list[str]:
        prefix = self._abs(prefix)
        return [strip_prefix(path, self.root) for path in self._routes if has_prefix(path, prefix)]

    def watch(self, prefix: str = "") -> AnnouncementWatcher:
        watcher = AnnouncementWatcher(self, prefix)
        self._watchers.add(watcher)
        return watcher
