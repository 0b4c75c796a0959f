"""The MoQ session engine: one connection, one TaskGroup, both roles.

After setup a session is symmetric. Peer-opened bidi streams are announce
requests (served from our :class:`~.mux.TrackMux`) and subscriptions (served
by the mux's handlers); peer-opened uni streams are groups for our own
subscriptions. Everything the session starts runs in its TaskGroup, so
:meth:`Session.close` cancels all of it and returns only when it has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .announce import AnnouncementReader
from .mux import TrackMux
from .paths import join_path, normalize_path, strip_prefix
from .protocol.errors import (
    ErrorCode,
    MoQError,
    ProtocolError,
    SessionClosed,
    StreamError,
    SubscribeError,
)
from .protocol.limits import Limits
from .protocol.lite import BidiStreamType, Codec, UniStreamType
from .protocol.messages import Announce, AnnounceInit, AnnouncePlease, Subscribe
from .protocol.wire import encode_varint
from .reader import StreamReader
from .scheduler import SendScheduler
from .track import GroupReader, TrackReader, TrackWriter
from .transport.base import BidiStream, Connection, ReceiveStream, SendStream

logger = logging.getLogger("moqt_asgi.session")


class _Closing(Exception):
    """Raised inside the session TaskGroup to stop everything in it."""


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
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._close_reason: SessionClosed | None = None
        self._cleanups: list[Callable[[], Awaitable[None]]] = []

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

    async def run(self) -> None:
        """Serve the session until it closes. Everything it starts stops before this returns."""
        if self._runner is None:
            self._runner = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._accept_bidi_loop())
                tg.create_task(self._accept_uni_loop())
                if self._session_stream is not None:
                    tg.create_task(self._session_stream_loop(*self._session_stream))
                tg.create_task(self._watch_connection())
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
        await self._closed_event.wait()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(runner)
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
        return self._tg.create_task(self._guard(coro, name), name=name)

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
            self._spawn(self._reset_on_timeout(stream, self._serve_bidi(stream)), f"bidi-{stream.stream_id}")

    async def _accept_uni_loop(self) -> None:
        while True:
            try:
                stream = await self.connection.accept_uni()
            except SessionClosed:
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

    async def _serve_bidi(self, stream: BidiStream) -> None:
        reader = StreamReader(stream)
        kind = await self._with_timeout(reader.read_varint())
        if kind == BidiStreamType.ANNOUNCE:
            await self._serve_announce(stream, reader)
        elif kind == BidiStreamType.SUBSCRIBE:
            await self._serve_subscribe(stream, reader)
        elif kind == BidiStreamType.SESSION:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, "a second session stream")
        else:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, f"unknown bidi stream type {kind:#x}")

    async def _serve_uni(self, stream: ReceiveStream) -> None:
        reader = StreamReader(stream)
        kind = await self._with_timeout(reader.read_varint())
        if kind != UniStreamType.GROUP:
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, f"unknown uni stream type {kind:#x}")
        header = self.codec.decode_group_header(
            await self._with_timeout(reader.read_message(self.limits.max_message_size)))
        subscription = self._subscriptions.get(header.subscribe_id)
        if subscription is None:
            self.log.debug("group %d for unknown subscription %d", header.sequence, header.subscribe_id)
            stream.stop(ErrorCode.NOT_FOUND)
            return
        subscription._push_group(GroupReader(subscription, reader, header.sequence))

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

    # -- serving announce requests (we publish)
    async def _serve_announce(self, stream: BidiStream, reader: StreamReader) -> None:
        please = self.codec.decode_announce_please(
            await self._with_timeout(reader.read_message(self.limits.max_message_size)))
        prefix = normalize_path(please.prefix)
        watcher = self.mux.watch(prefix)
        try:
            suffixes = tuple(strip_prefix(path, prefix) for path in watcher.initial())
            stream.write(self.codec.encode_announce_init(AnnounceInit(suffixes)))
            forward = asyncio.ensure_future(self._forward_announcements(stream, watcher, prefix))
            try:
                if not await reader.at_eof():
                    raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "unexpected data on an announce stream")
            finally:
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError, MoQError):
                    await forward
            with contextlib.suppress(MoQError):
                stream.write(b"", end=True)
        finally:
            watcher.close()

    async def _forward_announcements(self, stream: BidiStream, watcher: Any, prefix: str) -> None:
        while True:
            path, active = await watcher.next()
            stream.write(self.codec.encode_announce(Announce(active, strip_prefix(path, prefix))))

    # -- serving subscriptions (we publish)
    async def _serve_subscribe(self, stream: BidiStream, reader: StreamReader) -> None:
        msg: Subscribe = self.codec.decode_subscribe(
            await self._with_timeout(reader.read_message(self.limits.max_message_size)))
        if msg.subscribe_id in self._published:
            self.log.warning("duplicate subscribe id %d", msg.subscribe_id)
            stream.reset(ErrorCode.DUPLICATE)
            stream.stop(ErrorCode.DUPLICATE)
            return
        if len(self._published) >= self.limits.max_subscriptions:
            stream.reset(ErrorCode.BOUNDS_EXCEEDED)
            stream.stop(ErrorCode.BOUNDS_EXCEEDED)
            return
        broadcast = normalize_path(msg.broadcast)
        route = self.mux.route(broadcast)
        if route is None:
            self.log.debug("subscribe %d to unknown broadcast %r", msg.subscribe_id, broadcast)
            stream.reset(ErrorCode.NOT_FOUND)
            stream.stop(ErrorCode.NOT_FOUND)
            return
        announcement, handler = route
        writer = TrackWriter(self, stream, msg.subscribe_id, broadcast, msg.track, msg.priority)
        self._published[msg.subscribe_id] = writer
        self.log.debug("serving subscription %d to %s/%s", msg.subscribe_id, broadcast, msg.track)
        try:
            await _first_of(
                self._run_track_handler(handler, writer),
                self._watch_subscriber(stream, reader, writer),
                announcement.wait_ended(),
            )
            if not writer.closed:
                await writer.close()
        finally:
            writer._cancelled()
            self._published.pop(msg.subscribe_id, None)

    async def _run_track_handler(self, handler: Any, writer: TrackWriter) -> None:
        try:
            await handler(writer)
        except StreamError as exc:
            # A stream of this track was stopped (a group the subscriber dropped, say) and the handler
            # gave up: the track is over, so the subscriber must hear it rather than wait forever.
            writer.close_with_error(exc.code)
            raise
        except SessionClosed:
            raise
        except Exception:
            self.log.exception("track handler for %s/%s failed", writer.broadcast, writer.track)
            writer.close_with_error(ErrorCode.CANCEL)

    async def _watch_subscriber(self, stream: BidiStream, reader: StreamReader, writer: TrackWriter) -> None:
        """Returns when the subscriber unsubscribes (FIN or reset)."""
        try:
            while (body := await reader.read_message_or_eof(self.limits.max_message_size)) is not None:
                update = self.codec.decode_subscribe_update(body)
                writer.priority = update.priority
        except StreamError:
            return
        except ProtocolError as exc:
            self.log.warning("subscription %d: %s", writer.subscribe_id, exc)
            writer.close_with_error(exc.code)

    # -- subscribing (we consume)
    async def subscribe(self, broadcast: str, track: str, *, priority: int = 0) -> TrackReader:
        """Subscribe to ``track`` of ``broadcast``; returns once the publisher accepted.

        Raises :class:`SubscribeError` with the publisher's code if refused.
        """
        await self._started.wait()
        if self.closed:
            raise self._close_reason or SessionClosed()
        broadcast = normalize_path(broadcast)
        subscribe_id = next(self._subscribe_ids)
        stream = await self.connection.open_bi()
        reader = TrackReader(self, stream, subscribe_id, broadcast, track, priority)
        self._subscriptions[subscribe_id] = reader
        stream.write(encode_varint(BidiStreamType.SUBSCRIBE)
                     + self.codec.encode_subscribe(Subscribe(subscribe_id, broadcast, track, priority)))
        stream_reader = StreamReader(stream)
        try:
            body = await self._with_timeout(stream_reader.read_message_or_eof(self.limits.max_message_size))
            if body is None:
                raise SubscribeError(ErrorCode.CANCEL, f"publisher ended {broadcast}/{track} before accepting it")
            self.codec.decode_subscribe_ok(body)
        except StreamError as exc:
            self._subscriptions.pop(subscribe_id, None)
            raise SubscribeError(exc.code, f"subscription to {broadcast}/{track} refused with code {exc.code}") from None
        except BaseException:
            self._subscriptions.pop(subscribe_id, None)
            stream.reset(ErrorCode.CANCEL)
            raise
        self._spawn(self._watch_publisher(reader, stream_reader), f"subscription-{subscribe_id}")
        return reader

    async def _watch_publisher(self, track: TrackReader, reader: StreamReader) -> None:
        try:
            if not await reader.at_eof():
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "unexpected data after SUBSCRIBE_OK")
            track._end()
        except StreamError as exc:
            track._end(SubscribeError(exc.code, f"publisher aborted {track.broadcast}/{track.track} with code {exc.code}"))
        except MoQError as exc:
            track._end(exc)
            raise
        except asyncio.CancelledError:
            track._end(self._close_reason or SessionClosed(0, "session closed"))
            raise
        finally:
            self._subscriptions.pop(track.subscribe_id, None)

    def _forget_subscription(self, track: TrackReader) -> None:
        self._subscriptions.pop(track.subscribe_id, None)

    # -- discovering (we consume announcements)
    async def announced(self, prefix: str = "") -> AnnouncementReader:
        """Ask the peer for its broadcasts under ``prefix``; iterate the result for changes."""
        await self._started.wait()
        if self.closed:
            raise self._close_reason or SessionClosed()
        prefix = normalize_path(prefix)
        stream = await self.connection.open_bi()
        stream.write(encode_varint(BidiStreamType.ANNOUNCE) + self.codec.encode_announce_please(AnnouncePlease(prefix)))
        reader = StreamReader(stream)
        try:
            init = self.codec.decode_announce_init(
                await self._with_timeout(reader.read_message(self.limits.max_message_size)))
        except BaseException:
            stream.reset(ErrorCode.CANCEL)
            raise
        announcements = AnnouncementReader(stream, prefix, self.limits.max_announcements)
        for suffix in init.suffixes:
            announcements._update(join_path(prefix, normalize_path(suffix)), True)
        self._spawn(self._read_announcements(announcements, reader), f"announced-{stream.stream_id}")
        return announcements

    async def _read_announcements(self, announcements: AnnouncementReader, reader: StreamReader) -> None:
        try:
            while (body := await reader.read_message_or_eof(self.limits.max_message_size)) is not None:
                msg = self.codec.decode_announce(body)
                announcements._update(join_path(announcements.prefix, normalize_path(msg.suffix)), msg.active)
        except ProtocolError as exc:
            announcements._fail(exc)
            reader.stream.stop(exc.code)
            raise
        except (StreamError, SessionClosed) as exc:
            announcements._fail(exc)
            return
        finally:
            announcements._finish()


async def _first_of(*aws: Awaitable[Any]) -> None:
    """Run ``aws`` together; when the first finishes, cancel the rest. Errors propagate."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result

