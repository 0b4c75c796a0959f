"""The MoQ session: one connection, one TaskGroup, both roles.

After setup a session is symmetric. Peer-opened bidi streams are announce
requests (served from our :class:`~.mux.TrackMux`) and subscriptions (served
by the mux's handlers); peer-opened uni streams are groups for our own
subscriptions. Everything the session starts runs in its TaskGroup, so
closing it cancels all of it.

:class:`Session` is the public facade over a :class:`~._core.SessionCore`,
the state the engine's modules share (its docstring describes every
stream's state machine).

Closing follows one rule across the package: ``close()`` acts at once and
returns an awaitable; await it (or :meth:`Session.wait_closed`) to wait
until everything has stopped. ``aclose()`` is ``await close()``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..auth.tokens import Grant
from ..protocol.codec import Codec
from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from ..protocol.limits import Limits
from ..protocol.lite_wire import BidiStreamType, Features, LiteBidi, LiteUni, UniStreamType
from ..protocol.messages import Goaway, LiteSetup, TrackInfo
from ..protocol.wire import encode_varint
from ..transport.base import BidiStream, Connection, ReceiveStream, SendStream
from . import _publisher as publisher
from . import _subscriber as subscriber
from ._core import SessionCore
from ._reader import StreamReader
from .announce import AnnouncementReader
from .mux import TrackMux
from .track import GroupReader, TrackReader, TrackWriter

logger = logging.getLogger("moqt_asgi.engine.session")


STOP_TIMEOUT = 5.0
"""Seconds closing waits for tasks that do not end when cancelled (they swallow the cancellation):
after half of it they are cancelled again (logged as a warning), after all of it they are abandoned
and their stacks logged. Servers do not wait that long (see ``stopping.CLOSE_GRACE``)."""


class _Closing(Exception):
    """Raised inside the session TaskGroup to stop everything in it."""


async def abandon_after(task: asyncio.Future[Any], timeout: float, what: str, log: logging.Logger,
                        stragglers: Iterable[asyncio.Task[Any]] = ()) -> bool:
    """Wait up to ``timeout`` seconds for ``task`` (already cancelled) to end; True if it did.

    If it does not, it is left running and an error names it, with the stacks
    of ``stragglers`` (the tasks that did not stop), so a handler that
    swallows :class:`asyncio.CancelledError` cannot hang a shutdown.
    """
    if not task.done():
        await asyncio.wait({task}, timeout=timeout / 2)
    if not task.done():
        # Perhaps only slow (a busy loop): cancel again what has not stopped, then give up on it.
        waiting = [each for each in stragglers if not each.done()] or (
            [task] if isinstance(task, asyncio.Task) else [])
        log.warning("%s: %d task(s) still running %.1fs after being cancelled; cancelling again", what,
                    len(waiting), timeout / 2)
        for each in waiting:
            each.cancel()
        await asyncio.wait({task}, timeout=timeout / 2)
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: it was logged where it happened
        return True
    stacks = []
    for straggler in [*stragglers] or ([task] if isinstance(task, asyncio.Task) else []):
        if not straggler.done():
            out = io.StringIO()
            straggler.print_stack(file=out)
            stacks.append(out.getvalue())
    log.error("%s did not stop within %.1fs of being cancelled; abandoning it\n%s", what, timeout, "".join(stacks))
    return False


@dataclass(frozen=True, slots=True)
class SessionStats:
    """A snapshot of what a session holds, and its traffic totals so far (see :meth:`Session.stats`)."""

    served: int
    """The peer's subscriptions we serve (at most ``Limits.max_subscriptions``)."""
    subscribed: int
    """Our subscriptions open."""
    fetches: int
    """FETCH requests being served (at most ``Limits.max_fetches``)."""
    announce_streams: int
    """The peer's announce requests being served (at most ``Limits.max_announce_streams``)."""
    assembling_bytes: int
    """Bytes of frames being read (at most ``Limits.max_assembling_bytes``)."""
    queued_writes: int
    """Writes waiting for their turn in the send scheduler (one at most per group or reply)."""
    tasks: int
    """Tasks running in the session's TaskGroup."""
    frames_sent: int
    """Frames sent so far (groups and fetch replies; frames of skipped groups not counted)."""
    frames_received: int
    """Frames received whole so far (groups and fetch replies)."""
    bytes_sent: int
    """Payload bytes of :attr:`frames_sent` (frame headers not counted)."""
    bytes_received: int
    """Payload bytes of :attr:`frames_received`."""
    groups_dropped: int
    """Groups given up for a slow subscriber so far: ours reset with ``OLD`` as publisher, and the peer's
    dropped unread from our subscriptions' queues."""


class Session:
    """A MoQ session over one transport connection.

    Publish by giving it a :class:`TrackMux` (``mux``); subscribe with
    :meth:`subscribe`; discover the peer's broadcasts with :meth:`announced`.
    Use it as an async context manager, or call :meth:`close`.
    """

    def __init__(self, connection: Connection, codec: Codec, *, mux: TrackMux | None = None,
                 limits: Limits, is_client: bool, path: str = "",
                 session_stream: tuple[BidiStream, StreamReader] | None = None,
                 logger_: logging.Logger | None = None, timeout: float = 10.0) -> None:
        self._core = SessionCore(connection, codec, mux=mux if mux is not None else TrackMux(), limits=limits,
                                 is_client=is_client, path=path, timeout=timeout, log=logger_ or logger)
        self._session_stream = session_stream
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self.peer_setup: LiteSetup | None = None
        """The peer's lite-05+ SETUP (path, role, probe level...), if its version has one. On
        WebTransport the CONNECT's path is the session's: this one then carries none."""
        self._bidi_handlers = _bidi_handlers(codec)

    # -- what it is
    @property
    def connection(self) -> Connection:
        return self._core.connection

    @property
    def codec(self) -> Codec:
        return self._core.codec

    @property
    def features(self) -> Features:
        """What this session's version can do (FETCH, GOAWAY, timestamps...)."""
        return self._core.features

    @property
    def limits(self) -> Limits:
        return self._core.limits

    @property
    def mux(self) -> TrackMux:
        """What this session publishes."""
        return self._core.mux

    @property
    def is_client(self) -> bool:
        return self._core.is_client

    @property
    def path(self) -> str:
        return self._core.path

    @property
    def timeout(self) -> float:
        return self._core.timeout

    @property
    def log(self) -> logging.Logger:
        return self._core.log

    @property
    def grant(self) -> Grant | None:
        """What the peer may publish and read (``None``: anything). Set from the setup request; the
        engine refuses SUBSCRIBE, FETCH, TRACK and announce requests outside it, and the session
        closes (``UNAUTHORIZED``) when it expires."""
        return self._core.grant

    @grant.setter
    def grant(self, grant: Grant | None) -> None:
        self._core.grant = grant

    @property
    def version(self) -> int:
        return self._core.codec.version

    @property
    def version_name(self) -> str:
        return self._core.codec.name

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        return f"<Session {role} {self.version_name} path={self.path!r}{' closed' if self.closed else ''}>"

    # -- lifecycle
    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def close_reason(self) -> SessionClosed | None:
        return self._core.close_reason

    @property
    def served(self) -> Mapping[int, TrackWriter]:
        """The peer's subscriptions this session serves, by the peer's subscribe id (read-only view)."""
        return MappingProxyType(self._core.published)

    @property
    def subscribed(self) -> Mapping[int, TrackReader]:
        """This session's own open subscriptions, by subscribe id (read-only view)."""
        return MappingProxyType(self._core.subscriptions)

    def stats(self) -> SessionStats:
        """What this session is holding right now (for metrics, and to see limits at work)."""
        core = self._core
        return SessionStats(served=len(core.published), subscribed=len(core.subscriptions), fetches=core.fetches,
                            announce_streams=core.announce_streams, assembling_bytes=core.assembling,
                            queued_writes=core.scheduler.queued, tasks=len(core.tasks),
                            frames_sent=core.frames_sent, frames_received=core.frames_received,
                            bytes_sent=core.bytes_sent, bytes_received=core.bytes_received,
                            groups_dropped=core.groups_dropped)

    @property
    def idle(self) -> bool:
        """No work in flight: no subscription of the peer's served, none of ours open.

        Announcement streams do not count (they stay open for a session's life).
        """
        return not self._core.published and not self._core.subscriptions

    def start(self) -> asyncio.Task[None]:
        """Run the session in a new task (clients use this; servers await :meth:`run`)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self.run(), name=f"moq-session-{id(self):x}")
        return self._runner

    async def wait_started(self) -> None:
        """Wait until :meth:`start` has the session running (its TaskGroup open, so :meth:`spawn` works)."""
        await self._started.wait()

    async def run(self) -> None:
        """Serve the session until it closes. Everything it starts stops before this returns."""
        core = self._core
        if self._runner is None:
            self._runner = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                core.task_group = tg
                tg.create_task(self._accept_bidi_loop())
                tg.create_task(self._accept_uni_loop())
                if self._session_stream is not None:  # its protocol errors close the session with their code
                    tg.create_task(core.guard(self._session_stream_loop(*self._session_stream), "session-stream"))
                tg.create_task(self._watch_connection())
                if core.grant is not None and core.grant.expires_at is not None:
                    tg.create_task(self._expire(core.grant.expires_at))
                self._started.set()
                await core.closed_event.wait()
                raise _Closing
        except* _Closing:
            pass
        except* Exception as group:
            core.log.error("session failed", exc_info=group)
            core.mark_closed(SessionClosed(ErrorCode.TRANSPORT, "internal error"))
            core.connection.close(ErrorCode.TRANSPORT, "internal error")
        finally:
            core.task_group = None
            self._started.set()
            for reader in list(core.subscriptions.values()):
                reader.end(core.close_reason)
            core.subscriptions.clear()
            core.published.clear()
            for cleanup in reversed(self._cleanups):
                try:
                    await cleanup()
                except Exception:
                    core.log.exception("session cleanup failed")

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run ``cleanup()`` after the session has stopped (transports release sockets here)."""
        self._cleanups.append(cleanup)

    def close(self, code: int = 0, reason: str = "") -> asyncio.Future[SessionClosed]:
        """Close the session and its connection with ``code`` (0 = no error), now; idempotent.

        Returns an awaitable: await it to wait until every task of the
        session has stopped (:meth:`wait_closed`).
        """
        self._core.close(code, reason)
        return asyncio.ensure_future(self.wait_closed())

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        """Close and wait until every task of the session has finished (``await close()``)."""
        await self.close(code, reason)

    async def wait_closed(self) -> SessionClosed:
        """Wait until the session is closed and its tasks have stopped.

        A task that ignores cancellation is waited for at most
        :data:`STOP_TIMEOUT` seconds, then abandoned (logged with its stack).
        """
        core = self._core
        await core.closed_event.wait()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            await abandon_after(runner, STOP_TIMEOUT, repr(self), core.log, core.tasks)
        assert core.close_reason is not None
        return core.close_reason

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def spawn(self, coro: Awaitable[Any], name: str = "moq-task") -> asyncio.Task[Any]:
        """Run ``coro`` in this session's TaskGroup: it is cancelled when the session closes.

        Exceptions are logged; a :class:`ProtocolError` closes the session with its code.
        """
        return self._core.spawn(coro, name)

    async def _expire(self, expires_at: float) -> None:
        """Close the session when its grant expires (a token's ``exp`` holds for the whole session)."""
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        self.log.info("session grant expired; closing")
        self._core.close(ErrorCode.UNAUTHORIZED, "authorization expired")

    async def _watch_connection(self) -> None:
        closed = await self._core.connection.wait_closed()
        self._core.mark_closed(closed)

    # -- incoming streams
    async def _accept_bidi_loop(self) -> None:
        core = self._core
        while True:
            try:
                stream = await core.connection.accept_bi()
            except SessionClosed:
                return
            if core.task_group is None or core.closed:
                return
            core.spawn(self._reset_on_timeout(stream, self._serve_bidi(stream)), f"bidi-{stream.stream_id}")

    async def _accept_uni_loop(self) -> None:
        core = self._core
        while True:
            try:
                stream = await core.connection.accept_uni()
            except SessionClosed:
                return
            if core.task_group is None or core.closed:
                return
            core.spawn(self._reset_on_timeout(stream, self._serve_uni(stream)), f"uni-{stream.stream_id}")

    async def _reset_on_timeout(self, stream: ReceiveStream, coro: Awaitable[None]) -> None:
        """A peer that opens a stream and stalls before its first message loses the stream, not the session."""
        try:
            await coro
        except TimeoutError:
            self.log.info("stream %d: nothing from the peer within %.1fs", stream.stream_id, self.timeout)
            stream.stop(ErrorCode.TIMEOUT)
            if isinstance(stream, SendStream):
                stream.reset(ErrorCode.TIMEOUT)

    def _unknown_stream(self, stream: ReceiveStream, what: str) -> None:
        """lite-01/02 and gomoqt close the session; lite-03+ refuse just that stream."""
        if self.features.unknown_stream_fatal:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, what)
        self.log.debug("refusing stream %d: %s", stream.stream_id, what)
        stream.stop(ErrorCode.UNEXPECTED_STREAM)
        if isinstance(stream, SendStream):
            stream.reset(ErrorCode.UNEXPECTED_STREAM)

    async def _serve_bidi(self, stream: BidiStream) -> None:
        reader = StreamReader(stream)
        kind = await self._core.request(reader.read_varint())
        if kind == BidiStreamType.SESSION and self.features.session_stream:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, "a second session stream")
        serve = self._bidi_handlers.get(kind)
        if serve is None:
            self._unknown_stream(stream, f"unknown bidi stream type {kind:#x}")
            return
        await serve(self._core, stream, reader)

    async def _serve_uni(self, stream: ReceiveStream) -> None:
        core = self._core
        reader = StreamReader(stream)
        kind = await core.request(reader.read_varint())
        if kind == LiteUni.SETUP and self.features.setup_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a second SETUP stream")
        if kind != UniStreamType.GROUP:
            self._unknown_stream(stream, f"unknown uni stream type {kind:#x}")
            return
        header = core.codec.decode_group_header(await core.request(reader.read_message(core.limits.max_message_size)))
        subscription = core.subscriptions.get(header.subscribe_id)
        if subscription is None:
            self.log.debug("group %d for unknown subscription %d", header.sequence, header.subscribe_id)
            stream.stop(ErrorCode.NOT_FOUND)
            return
        subscription.deliver(GroupReader(subscription, reader, header.sequence, header.frame_start))

    async def _session_stream_loop(self, stream: BidiStream, reader: StreamReader) -> None:
        """lite-01/02 keep the setup stream open for SESSION_INFO; its end ends the session."""
        core = self._core
        try:
            while (body := await reader.read_message_or_eof(core.limits.max_message_size)) is not None:
                info = core.codec.decode_session_info(body)
                self.log.debug("peer bitrate estimate: %d", info.bitrate)
        except StreamError as exc:
            core.close(exc.code, "session stream reset by peer")
            return
        except SessionClosed:
            return
        core.close(0, "session stream finished by peer")

    # -- GOAWAY (lite-04+)
    @property
    def goaway_uri(self) -> str | None:
        """The peer's GOAWAY redirect once one arrived (``""``: go away, no new address), else ``None``."""
        return self._core.goaway_uri

    async def wait_goaway(self) -> str:
        """Wait for the peer's GOAWAY; returns its URI (``""`` for none). Raises if the session closes first."""
        core = self._core
        waiter = asyncio.ensure_future(core.goaway_event.wait())
        closed = asyncio.ensure_future(core.closed_event.wait())
        try:
            await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closed.cancel()
        if core.goaway_uri is None:
            raise core.close_reason or SessionClosed()
        return core.goaway_uri

    async def send_goaway(self, uri: str = "") -> None:
        """Tell the peer to go away (lite-04+), optionally to ``uri`` (servers only)."""
        if not self.features.goaway:
            raise MoQError(f"{self.version_name} has no GOAWAY")
        if uri and self.is_client:
            raise MoQError("only a server may redirect its peer")
        stream = await self.connection.open_bi()
        stream.write(encode_varint(LiteBidi.GOAWAY) + self.codec.encode_goaway(Goaway(uri)), end=True)

    # -- what we ask of the peer (see _subscriber.py)
    async def _ready(self) -> None:
        await self._started.wait()
        if self.closed:
            raise self.close_reason or SessionClosed()

    async def subscribe(self, broadcast: str, track: str, *, priority: int = 0, ordered: bool = False,
                        max_latency_ms: int = 0, start_group: int | None = None,
                        end_group: int | None = None, wait_for_start: bool = True) -> TrackReader:
        """Subscribe to ``track`` of ``broadcast``.

        Returns once the publisher accepted (lite-01..04), or on lite-05+ at
        its first response or group (a publisher that has no group yet leaves
        the subscription pending: it is returned after the session timeout).
        ``start_group`` / ``end_group`` bound the groups wanted (lite-03+),
        ``max_latency_ms`` lets the publisher skip stale groups (0: no limit).
        Raises :class:`SubscribeError` with the publisher's code if refused.
        With ``wait_for_start=False`` a lite-05+ subscription returns at once,
        pending (a refusal then ends the reader rather than raising here).
        """
        await self._ready()
        return await subscriber.subscribe(self._core, broadcast, track, priority=priority, ordered=ordered,
                                          max_latency_ms=max_latency_ms, start_group=start_group, end_group=end_group,
                                          wait_for_start=wait_for_start)

    def update_subscription(self, track: TrackReader, *, priority: int | None = None, max_latency_ms: int = 0,
                            start_group: int | None = None, end_group: int | None = None) -> None:
        """Send SUBSCRIBE_UPDATE (lite-03+ and gomoqt) for ``track`` (the same as :meth:`TrackReader.update`)."""
        track.update(priority=priority, max_latency_ms=max_latency_ms, start_group=start_group, end_group=end_group)

    async def announced(self, prefix: str = "") -> AnnouncementReader:
        """Ask the peer for its broadcasts under ``prefix``; iterate the result for changes."""
        await self._ready()
        return await subscriber.announced(self._core, prefix)

    async def fetch(self, broadcast: str, track: str, group: int, *, priority: int = 0) -> list[bytes]:
        """The frames of group ``group`` from the publisher's cache (lite-03+)."""
        return [payload for payload, _ in await self.fetch_timed(broadcast, track, group, priority=priority)]

    async def fetch_timed(self, broadcast: str, track: str, group: int, *,
                          priority: int = 0) -> list[tuple[bytes, int | None]]:
        """Like :meth:`fetch`, each frame with its timestamp (lite-05+; ``None`` before)."""
        await self._ready()
        core = self._core
        frames = await subscriber.fetch_timed(core, broadcast, track, group, priority=priority)
        core.frames_received += len(frames)
        core.bytes_received += sum(len(payload) for payload, _ in frames)
        return frames

    async def track_info(self, broadcast: str, track: str) -> TrackInfo:
        """The publisher's TRACK_INFO (priority, max latency, timescale; lite-05+)."""
        await self._ready()
        return await subscriber.track_info(self._core, broadcast, track)


Serve = Callable[[SessionCore, BidiStream, StreamReader], Awaitable[None]]

_HANDLERS: dict[int, Serve] = {
    LiteBidi.ANNOUNCE: publisher.serve_announce,
    LiteBidi.SUBSCRIBE: publisher.serve_subscribe,
    LiteBidi.FETCH: publisher.serve_fetch,
    LiteBidi.PROBE: publisher.serve_probe,
    LiteBidi.GOAWAY: publisher.serve_goaway,
    LiteBidi.TRACK: publisher.serve_track,
}


def _bidi_handlers(codec: Codec) -> dict[int, Serve]:
    """The peer-opened bidi stream types this codec's version has."""
    kinds = codec.bidi_stream_types
    return {int(kind): _HANDLERS[int(kind)] for kind in kinds}
