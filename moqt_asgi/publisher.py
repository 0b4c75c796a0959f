"""The publisher's half of a session: streams the peer opens to read from us.

Each function serves one peer-opened bidi stream whose type byte was
already read: announce requests (from our :class:`~.mux.TrackMux`),
subscriptions (run by the mux's track handlers), and from lite-03 on FETCH,
PROBE, GOAWAY and TRACK streams. What differs between versions is asked of
the codec's :class:`~.protocol.lite_wire.Features`, never of a version number.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from .mux import AnnouncementWatcher
from .paths import normalize_path, strip_prefix
from .protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from .protocol.lite_wire import HopEncoding
from .protocol.messages import (
    Announce,
    AnnounceEnd,
    AnnounceInit,
    AnnounceOk,
    AnnounceStart,
    Subscribe,
    TrackInfo,
)
from .reader import StreamReader
from .track import DEFAULT_TIMESCALE, TrackWriter
from .transport.base import BidiStream

if TYPE_CHECKING:
    from .session import Session

FetchResult = list[tuple[bytes, int | None]]
"""A fetched group: ``(payload, timestamp or None)`` per frame."""


def _refuse(stream: BidiStream, code: int) -> None:
    stream.reset(code)
    stream.stop(code)


# -- announce requests
class _AnnounceEncoder:
    """Turns mux changes into this version's announce messages on one stream."""

    def __init__(self, session: Session, prefix: str, exclude_hop: int) -> None:
        self.session = session
        self.codec: Any = session.codec
        self.features = session.features
        self.prefix = prefix
        self.exclude_hop = exclude_hop
        self._ids: Any = None
        if self.features.announce_ids:
            from .protocol.lite06 import AnnounceIds

            self._ids = AnnounceIds(session.limits.max_announcements)
        self._sent: set[str] = set()

    def route_of(self, path: str) -> tuple[int, ...] | None:
        """The hops to announce ``path`` with, or ``None`` to keep it from this peer."""
        route = self.session.mux.route(path)
        hops = route[0].hops if route is not None else ()
        if self.exclude_hop and self.exclude_hop in hops:
            return None  # the peer is on the route already: announcing it back would make a loop
        return hops

    def encode(self, path: str, active: bool) -> bytes:
        suffix = strip_prefix(path, self.prefix)
        if active:
            hops = self.route_of(path)
            if hops is None:
                return b""
            self._sent.add(path)
        else:
            if path not in self._sent:
                return b""
            self._sent.discard(path)
            hops = ()
        if self._ids is not None:
            if active:
                self._ids.start(suffix)
                return bytes(self.codec.encode_announcement(AnnounceStart(suffix, hops)))
            announce_id = self._ids.id_of(suffix)
            if announce_id is None:
                return b""
            self._ids.end(announce_id)
            return bytes(self.codec.encode_announcement(AnnounceEnd(announce_id)))
        if active and not self.features.announce_ok and self.features.hops is not HopEncoding.NONE:
            hops = (*hops, self.session.mux.hop_id)  # lite-03/04: the publisher appends itself
        hops = hops[-32:]
        return bytes(self.codec.encode_announce(Announce(active, suffix, hops)))


async def serve_announce(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    codec: Any = session.codec
    features = session.features
    please = codec.decode_announce_please(
        await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    prefix = normalize_path(please.prefix)
    watcher = session.mux.watch(prefix)
    try:
        encoder = _AnnounceEncoder(session, prefix, please.exclude_hop)
        initial = [path for path in watcher.initial() if encoder.route_of(path) is not None]
        if features.announce_init:
            stream.write(codec.encode_announce_init(AnnounceInit(tuple(strip_prefix(p, prefix) for p in initial))))
            encoder._sent.update(initial)
        else:
            out = bytearray()
            if features.announce_ok:
                out += codec.encode_announce_ok(AnnounceOk(session.mux.hop_id, len(initial)))
            for path in initial:
                out += encoder.encode(path, True)
            stream.write(bytes(out))
        forward = asyncio.ensure_future(_forward_announcements(stream, watcher, encoder))
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


async def _forward_announcements(stream: BidiStream, watcher: AnnouncementWatcher, encoder: _AnnounceEncoder) -> None:
    while True:
        path, active = await watcher.next()
        data = encoder.encode(path, active)
        if data:
            stream.write(data)


# -- subscriptions
async def serve_subscribe(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    msg: Subscribe = session.codec.decode_subscribe(
        await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    published = session._published
    if msg.subscribe_id in published:
        session.log.warning("duplicate subscribe id %d", msg.subscribe_id)
        _refuse(stream, ErrorCode.DUPLICATE)
        return
    if len(published) >= session.limits.max_subscriptions:
        _refuse(stream, ErrorCode.BOUNDS_EXCEEDED)
        return
    broadcast = normalize_path(msg.broadcast)
    route = session.mux.route(broadcast)
    if route is None:
        session.log.debug("subscribe %d to unknown broadcast %r", msg.subscribe_id, broadcast)
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    announcement, handler = route
    writer = TrackWriter(session, stream, msg, broadcast)
    published[msg.subscribe_id] = writer
    session.log.debug("serving subscription %d to %s/%s", msg.subscribe_id, broadcast, msg.track)
    try:
        await _first_of(
            _run_track_handler(session, handler, writer),
            _watch_subscriber(session, reader, writer),
            announcement.wait_ended(),
            writer._finished.wait(),
        )
        if not writer.closed:
            await writer.close()
    finally:
        writer._cancelled()
        published.pop(msg.subscribe_id, None)


async def _run_track_handler(session: Session, handler: Any, writer: TrackWriter) -> None:
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
        session.log.exception("track handler for %s/%s failed", writer.broadcast, writer.track)
        writer.close_with_error(ErrorCode.CANCEL)


async def _watch_subscriber(session: Session, reader: StreamReader, writer: TrackWriter) -> None:
    """Returns when the subscriber unsubscribes (FIN or reset); applies SUBSCRIBE_UPDATEs."""
    try:
        while (body := await reader.read_message_or_eof(session.limits.max_message_size)) is not None:
            writer._update(session.codec.decode_subscribe_update(body))
    except StreamError:
        return
    except ProtocolError as exc:
        session.log.warning("subscription %d: %s", writer.subscribe_id, exc)
        writer.close_with_error(exc.code)


# -- fetch (lite-03+): one group, answered with its frames and FIN
async def serve_fetch(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    codec: Any = session.codec
    msg = codec.decode_fetch(await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    route = session.mux.route(normalize_path(msg.broadcast))
    fetch = getattr(route[1], "fetch_group", None) if route is not None else None
    frames: FetchResult | None = await fetch(msg.track, msg.group) if fetch is not None else None
    if frames is None:
        session.log.debug("fetch of %s/%s group %d: not available", msg.broadcast, msg.track, msg.group)
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    end = len(frames) if msg.end_frame is None else min(len(frames), msg.end_frame + 1)
    frames = frames[msg.start_frame:end]
    out = bytearray()
    if session.features.frame_timestamps:
        clock = codec.new_frame_clock()
        for payload, timestamp in frames:
            out += codec.encode_timed_frame(payload, clock, timestamp or 0)
    else:
        for payload, _ in frames:
            out += codec.encode_frame(payload)
    await session._scheduler.send(stream, bytes(out), end=True, priority=msg.priority, sequence=msg.group)
    await _expect_fin(reader)


# -- track info (lite-05+)
async def serve_track(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    codec: Any = session.codec
    msg = codec.decode_track_request(await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    route = session.mux.route(normalize_path(msg.broadcast))
    if route is None:
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    describe = getattr(route[1], "track_info", None)
    info: TrackInfo | None = describe(msg.track) if describe is not None else None
    if info is None:
        info = TrackInfo(priority=0, max_latency_ms=0, timescale=DEFAULT_TIMESCALE)
    stream.write(codec.encode_track_info(info), end=True)
    await _expect_fin(reader)


# -- probe (lite-03+): the peer's bitrate and RTT reports; we read them and report nothing ourselves
async def serve_probe(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    codec: Any = session.codec
    try:
        while (body := await reader.read_message_or_eof(session.limits.max_message_size)) is not None:
            probe = codec.decode_probe(body)
            session.log.debug("peer probe: bitrate=%s rtt=%s", probe.bitrate, probe.rtt_ms)
    except StreamError:
        return
    with contextlib.suppress(MoQError):
        stream.write(b"", end=True)


# -- goaway (lite-04+)
async def serve_goaway(session: Session, stream: BidiStream, reader: StreamReader) -> None:
    codec: Any = session.codec
    msg = codec.decode_goaway(await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    session._goaway_received(msg.uri)
    await _expect_fin(reader)


async def _expect_fin(reader: StreamReader) -> None:
    """The rest of a one-message request stream: FIN (or a reset); anything more breaks the protocol."""
    try:
        if not await reader.at_eof():
            raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "unexpected data after a request")
    except (StreamError, SessionClosed):
        pass


async def _first_of(*aws: Any) -> None:
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


__all__ = ["FetchResult", "serve_announce", "serve_fetch", "serve_goaway", "serve_probe", "serve_subscribe",
           "serve_track"]
