"""The MoQ session engine: one connection, one TaskGroup, both roles.

After setup a session is symmetric. Peer-opened bidi streams are announce
requests (served from our :class:`~.mux.TrackMux`) and subscriptions (served
by the mux's handlers); peer-opened uni streams are groups for our own
subscriptions. Everything the session starts runs in its TaskGroup, so
:meth:`Session.close` cancels all of it and returns only when it has stopped.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..auth.tokens import Grant
from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from ..protocol.limits import Limits
from ..protocol.lite import BidiStreamType, Codec, UniStreamType
from ..protocol.lite_wire import LiteBidi, LiteUni
from ..protocol.messages import Goaway, LiteSetup, SubscribeUpdate, TrackInfo
from ..protocol.versions import features_of
from ..protocol.wire import encode_varint
from ..transport.base import BidiStream, Connection, ReceiveStream, SendStream
from . import _publisher as publisher
from . import _subscriber as subscriber
from ._reader import StreamReader
from ._scheduler import SendScheduler
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
        self.connection = connection
        self.codec = codec
        self.mux = mux if mux is not None else TrackMux()
        self.limits = limits
        self.is_client = is_client
        self.path = path
        self.timeout = timeout
        self.log = logger_ or logger
        self._session_stream = session_stream
        self._scheduler = SendScheduler(connection)
        self._subscribe_ids = itertools.count()
        self._subscriptions: dict[int, TrackReader] = {}
        self._published: dict[int, TrackWriter] = {}
        self._assembling = 0
        """Bytes of frames being read (declared sizes), bounded by ``limits.max_assembling_bytes``."""
        self._fetches = 0
        """FETCH requests being served (bounded by ``limits.max_fetches``)."""
        self._announce_streams = 0
        """Announce requests of the peer's being served (bounded by ``limits.max_announce_streams``)."""
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._close_reason: SessionClosed | None = None
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self.features = features_of(codec)
        self.grant: Grant | None = None
        """What the peer may publish and read (``None``: anything). Set from the setup request; the
        engine refuses SUBSCRIBE, FETCH, TRACK and announce requests outside it, and the session
        closes (``UNAUTHORIZED``) when it expires."""
        self.peer_setup: LiteSetup | None = None
        """The peer's lite-05+ SETUP (path, role, probe level...), if its version has one."""
        self._bidi_handlers = _bidi_handlers(codec)
        self._goaway = asyncio.Event()
        self._goaway_uri: str | None = None
        connection.error_codes = codec.error_codes

    # -- identity
    @property
    def version(self) -> int:
        return self.codec.version

    @property
    def version_name(self) -> str:
        return self.codec.name

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        return f"<Session {role} {self.version_name} path={self.path!r}{' closed' if self.closed else ''}>"

    # -- lifecycle
    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> SessionClosed | None:
        return self._close_reason

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
        if self._runner is None:
            self._runner = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._accept_bidi_loop())
                tg.create_task(self._accept_uni_loop())
                if self._session_stream is not None:  # its protocol errors close the session with their code
                    tg.create_task(self._guard(self._session_stream_loop(*self._session_stream), "session-stream"))
                tg.create_task(self._watch_connection())
                if self.grant is not None and self.grant.expires_at is not None:
                    tg.create_task(self._expire(self.grant.expires_at))
                self._started.set()
                await self._closed_event.wait()
                raise _Closing
        except* _Closing:
            pass
        except* Exception as group:
            self.log.error("session failed", exc_info=group)
            self._mark_closed(SessionClosed(ErrorCode.TRANSPORT, "internal error"))
            self.connection.close(ErrorCode.TRANSPORT, "internal error")
        finally:
            self._tg = None
            self._started.set()
            for reader in list(self._subscriptions.values()):
                reader._end(self._close_reason)
            self._subscriptions.clear()
            self._published.clear()
            for cleanup in reversed(self._cleanups):
                try:
                    await cleanup()
                except Exception:
                    self.log.exception("session cleanup failed")

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run ``cleanup()`` after the session has stopped (transports release sockets here)."""
        self._cleanups.append(cleanup)

    def _mark_closed(self, reason: SessionClosed) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self.log.info("session closed: %s", reason)
        self._closed_event.set()

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the session and its connection with ``code`` (0 = no error). Idempotent."""
        if self._close_reason is not None:
            return
        self._mark_closed(SessionClosed(code, reason, remote=False))
        self.connection.close(code, reason)

    async def aclose(self, code: int = 0, reason: str = "") -> None:
        """Close and wait until every task of the session has finished."""
        self.close(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> SessionClosed:
        """Wait until the session is closed and its tasks have stopped.

        A task that ignores cancellation is waited for at most
        :data:`STOP_TIMEOUT` seconds, then abandoned (logged with its stack).
        """
        await self._closed_event.wait()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            await abandon_after(runner, STOP_TIMEOUT, repr(self), self.log, self._tasks)
        assert self._close_reason is not None
        return self._close_reason

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def spawn(self, coro: Awaitable[Any], name: str = "moq-task") -> asyncio.Task[Any]:
        """Run ``coro`` in this session's TaskGroup: it is cancelled when the session closes.

        Exceptions are logged; a :class:`ProtocolError` closes the session with its code.
        """
        return self._spawn(coro, name)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        if self._tg is None or self.closed:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise self._close_reason or SessionClosed(0, "session is not running")
        guarded = self._guard(coro, name)
        try:
            task = self._tg.create_task(guarded, name=name)
        except RuntimeError:  # the TaskGroup is already stopping
            guarded.close()
            if asyncio.iscoroutine(coro):
                coro.close()
            raise self._close_reason or SessionClosed(0, "session is stopping") from None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Awaitable[Any], name: str) -> None:
        """Run one stream's work: protocol errors close the session, nothing escapes."""
        try:
            await coro
        except ProtocolError as exc:
            self.log.warning("%s: protocol error from peer: %s", name, exc)
            self.close(exc.code, exc.message[:100])
        except (SessionClosed, StreamError) as exc:
            self.log.debug("%s ended: %s", name, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s failed", name)

    def _take_frame_room(self, size: int) -> bool:
        """Reserve room to assemble a frame of ``size`` bytes; False when the session's budget is spent.

        Flow control gives credit as frame bytes are read off the stream, so
        frames being assembled are what a peer could make us hold beyond the
        receive windows (a frame it never finishes, on many streams).
        """
        if self._assembling + size > self.limits.max_assembling_bytes and self._assembling:
            return False
        self._assembling += size
        return True

    def _give_frame_room(self, size: int) -> None:
        self._assembling -= size

    async def _expire(self, expires_at: float) -> None:
        """Close the session when its grant expires (a token's ``exp`` holds for the whole session)."""
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        self.log.info("session grant expired; closing")
        self.close(ErrorCode.UNAUTHORIZED, "authorization expired")

    async def _watch_connection(self) -> None:
        closed = await self.connection.wait_closed()
        self._mark_closed(closed)

    def _with_timeout(self, awaitable: Awaitable[Any]) -> Awaitable[Any]:
        return asyncio.wait_for(awaitable, self.timeout)

    # -- incoming streams
    async def _accept_bidi_loop(self) -> None:
        while True:
            try:
                stream = await self.connection.accept_bi()
            except SessionClosed:
                return
            if self._tg is None or self.closed:
                return
            self._spawn(self._reset_on_timeout(stream, self._serve_bidi(stream)), f"bidi-{stream.stream_id}")

    async def _accept_uni_loop(self) -> None:
        while True:
            try:
                stream = await self.connection.accept_uni()
            except SessionClosed:
                return
            if self._tg is None or self.closed:
                return
            self._spawn(self._reset_on_timeout(stream, self._serve_uni(stream)), f"uni-{stream.stream_id}")

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
        kind = await self._with_timeout(reader.read_varint())
        if kind == BidiStreamType.SESSION and self.features.session_stream:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, "a second session stream")
        serve = self._bidi_handlers.get(kind)
        if serve is None:
            self._unknown_stream(stream, f"unknown bidi stream type {kind:#x}")
            return
        await serve(self, stream, reader)

    async def _serve_uni(self, stream: ReceiveStream) -> None:
        reader = StreamReader(stream)
        kind = await self._with_timeout(reader.read_varint())
        if kind == LiteUni.SETUP and self.features.setup_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a second SETUP stream")
        if kind != UniStreamType.GROUP:
            self._unknown_stream(stream, f"unknown uni stream type {kind:#x}")
            return
        header = self.codec.decode_group_header(
            await self._with_timeout(reader.read_message(self.limits.max_message_size)))
        subscription = self._subscriptions.get(header.subscribe_id)
        if subscription is None:
            self.log.debug("group %d for unknown subscription %d", header.sequence, header.subscribe_id)
            stream.stop(ErrorCode.NOT_FOUND)
            return
        subscription._push_group(GroupReader(subscription, reader, header.sequence, header.frame_start))

    async def _session_stream_loop(self, stream: BidiStream, reader: StreamReader) -> None:
        """lite-01/02 keep the setup stream open for SESSION_INFO; its end ends the session."""
        try:
            while (body := await reader.read_message_or_eof(self.limits.max_message_size)) is not None:
                info = self.codec.decode_session_info(body)
                self.log.debug("peer bitrate estimate: %d", info.bitrate)
        except StreamError as exc:
            self.close(exc.code, "session stream reset by peer")
            return
        except SessionClosed:
            return
        self.close(0, "session stream finished by peer")

    # -- GOAWAY (lite-04+)
    @property
    def goaway_uri(self) -> str | None:
        """The peer's GOAWAY redirect once one arrived (``""``: go away, no new address), else ``None``."""
        return self._goaway_uri

    async def wait_goaway(self) -> str:
        """Wait for the peer's GOAWAY; returns its URI (``""`` for none). Raises if the session closes first."""
        waiter = asyncio.ensure_future(self._goaway.wait())
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closed.cancel()
        if self._goaway_uri is None:
            raise self._close_reason or SessionClosed()
        return self._goaway_uri

    def _goaway_received(self, uri: str) -> None:
        if self._goaway_uri is not None:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a second GOAWAY")
        if uri and self.is_client is False:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, "a client may not redirect the server")
        self._goaway_uri = uri
        self.log.info("peer sent GOAWAY%s", f" to {uri}" if uri else "")
        self._goaway.set()

    async def send_goaway(self, uri: str = "") -> None:
        """Tell the peer to go away (lite-04+), optionally to ``uri`` (servers only)."""
        if not self.features.goaway:
            raise MoQError(f"{self.version_name} has no GOAWAY")
        if uri and self.is_client:
            raise MoQError("only a server may redirect its peer")
        stream = await self.connection.open_bi()
        stream.write(encode_varint(LiteBidi.GOAWAY) + self.codec.encode_goaway(Goaway(uri)), end=True)  # type: ignore[attr-defined]

    # -- what we ask of the peer (see subscriber.py)
    async def _ready(self) -> None:
        await self._started.wait()
        if self.closed:
            raise self._close_reason or SessionClosed()

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
        return await subscriber.subscribe(self, broadcast, track, priority=priority, ordered=ordered,
                                          max_latency_ms=max_latency_ms, start_group=start_group, end_group=end_group,
                                          wait_for_start=wait_for_start)

    def update_subscription(self, track: TrackReader, *, priority: int | None = None, max_latency_ms: int = 0,
                            start_group: int | None = None, end_group: int | None = None) -> None:
        """Send SUBSCRIBE_UPDATE (lite-03+ and gomoqt) for ``track``."""
        subscriber.update(self, track, SubscribeUpdate(track.priority if priority is None else priority, False,
                                                       max_latency_ms, start_group, end_group))

    async def announced(self, prefix: str = "") -> AnnouncementReader:
        """Ask the peer for its broadcasts under ``prefix``; iterate the result for changes."""
        await self._ready()
        return await subscriber.announced(self, prefix)

    async def fetch(self, broadcast: str, track: str, group: int, *, priority: int = 0) -> list[bytes]:
        """The frames of group ``group`` from the publisher's cache (lite-03+)."""
        await self._ready()
        return await subscriber.fetch(self, broadcast, track, group, priority=priority)

    async def track_info(self, broadcast: str, track: str) -> TrackInfo:
        """The publisher's TRACK_INFO (priority, max latency, timescale; lite-05+)."""
        await self._ready()
        return await subscriber.track_info(self, broadcast, track)

    def _forget_subscription(self, track: TrackReader) -> None:
        self._subscriptions.pop(track.subscribe_id, None)


Serve = Callable[[Session, BidiStream, StreamReader], Awaitable[None]]

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
    kinds = getattr(codec, "bidi_stream_types", (LiteBidi.ANNOUNCE, LiteBidi.SUBSCRIBE))
    return {int(kind): _HANDLERS[int(kind)] for kind in kinds}


