"""The publisher's half of a core: streams the peer opens to read from us.

Each function serves one peer-opened bidi stream whose type byte was
already read: announce requests (from our :class:`~.mux.TrackMux`),
subscriptions (run by the mux's track handlers), and from lite-03 on FETCH,
PROBE, GOAWAY and TRACK streams. What differs between versions is asked of
the codec's :class:`~.protocol.lite_wire.Features`, never of a version number.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from typing import Any

from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError
from ..protocol.lite_wire import HopEncoding
from ..protocol.messages import Announce, AnnounceEnd, AnnounceInit, AnnounceOk, AnnounceStart, Subscribe, TrackInfo
from ..protocol.paths import normalize_path, strip_prefix
from ..transport.base import BidiStream
from ._core import SessionCore
from ._reader import StreamReader
from .mux import AnnouncementWatcher
from .track import DEFAULT_TIMESCALE, TrackWriter

FetchResult = list[tuple[bytes, int | None]]
"""A fetched group: ``(payload, timestamp or None)`` per frame."""


def _refuse(stream: BidiStream, code: int) -> None:
    stream.reset(code)
    stream.stop(code)


# -- announce requests
class _AnnounceEncoder:
    """Turns mux changes into this version's announce messages on one stream."""

    def __init__(self, core: SessionCore, prefix: str, exclude_hop: int) -> None:
        self.core = core
        self.codec = core.codec
        self.features = core.features
        self.prefix = prefix
        self.exclude_hop = exclude_hop
        # What we send is bounded by what our mux holds, not by what we accept from peers.
        self._ids = self.codec.new_announce_ids(sys.maxsize)
        self._sent: set[str] = set()

    def route_of(self, path: str) -> tuple[int, ...] | None:
        """The hops to announce ``path`` with, or ``None`` to keep it from this peer."""
        grant = self.core.grant
        if grant is not None and not grant.can_subscribe(path):
            return None  # the peer may not read it: it does not learn it exists
        route = self.core.mux.route(path)
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
            hops = (*hops, self.core.mux.hop_id)  # lite-03/04: the publisher appends itself
        hops = hops[-32:]
        return bytes(self.codec.encode_announce(Announce(active, suffix, hops)))


async def serve_announce(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    codec = core.codec
    please = codec.decode_announce_please(
        await core.request(reader.read_message(core.limits.max_message_size)))
    if core.announce_streams >= core.limits.max_announce_streams:
        core.log.info("refusing announce request for %r: %d already open", please.prefix,
                         core.announce_streams)
        _refuse(stream, ErrorCode.BOUNDS_EXCEEDED)
        return
    # A prefix the grant does not cover gets an empty set, not a refusal (as moq-relay does): the encoder
    # hides every path the grant may not read, and a moq-rs peer ends its whole session on a refused request.
    prefix = normalize_path(please.prefix)
    core.announce_streams += 1
    watcher = core.mux.watch(prefix)
    try:
        encoder = _AnnounceEncoder(core, prefix, please.exclude_hop)
        await _send_initial(core, stream, encoder, [path for path in watcher.initial()
                                                       if encoder.route_of(path) is not None])
        forward = asyncio.ensure_future(_forward_announcements(core, stream, watcher, encoder))
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
        core.announce_streams -= 1
        watcher.close()


_BATCH = 16 * 1024
"""Announce messages are written in batches of about this many bytes."""


async def _wait_for_room(core: SessionCore, stream: BidiStream) -> None:
    """Wait until the announce stream's unsent bytes are under ``Limits.announce_backlog``."""
    limit = core.limits.announce_backlog
    while stream.backlog() > limit and not core.connection.is_closed:
        await core.connection.wait_writable()


async def _send_initial(core: SessionCore, stream: BidiStream, encoder: _AnnounceEncoder, initial: list[str]) -> None:
    """The paths already active, in backlog-gated batches.

    lite-01/02 put them in one ANNOUNCE_INIT; we fill it up to
    ``Limits.max_sent_announce_init`` bytes and send the rest as ANNOUNCE
    messages, so a peer reading with the usual 64 KiB message limit still
    learns every path.
    """
    codec = core.codec
    features = core.features
    out = bytearray()
    rest = initial
    if features.announce_init:
        budget = core.limits.max_sent_announce_init - 16
        suffixes: list[str] = []
        for path in initial:
            suffix = strip_prefix(path, encoder.prefix)
            budget -= len(suffix.encode()) + 8
            if budget < 0:
                break
            suffixes.append(suffix)
        out += codec.encode_announce_init(AnnounceInit(tuple(suffixes)))
        encoder._sent.update(initial[:len(suffixes)])
        rest = initial[len(suffixes):]
    elif features.announce_ok:
        out += codec.encode_announce_ok(AnnounceOk(core.mux.hop_id, len(initial)))
    for path in rest:
        out += encoder.encode(path, True)
        if len(out) >= _BATCH:
            stream.write(bytes(out))
            out.clear()
            await _wait_for_room(core, stream)
    stream.write(bytes(out))


async def _forward_announcements(core: SessionCore, stream: BidiStream, watcher: AnnouncementWatcher,
                                 encoder: _AnnounceEncoder) -> None:
    """Changes as they happen, never more than ``Limits.announce_backlog`` ahead of the peer.

    While the peer is slow the watcher coalesces changes (one entry per
    path), so a path toggled a thousand times costs one message.
    """
    while True:
        await _wait_for_room(core, stream)
        if core.connection.is_closed:
            return
        path, active = await watcher.next()
        data = encoder.encode(path, active)
        if data:
            stream.write(data)


def _may_read(core: SessionCore, broadcast: str, stream: BidiStream) -> bool:
    """Refuse (``UNAUTHORIZED``) a request for a broadcast the core's grant does not let it read."""
    grant = core.grant
    if grant is None or grant.can_subscribe(broadcast):
        return True
    core.log.info("refusing %r: not granted to this core", broadcast)
    _refuse(stream, ErrorCode.UNAUTHORIZED)
    return False


# -- subscriptions
async def serve_subscribe(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    msg: Subscribe = core.codec.decode_subscribe(
        await core.request(reader.read_message(core.limits.max_message_size)))
    published = core.published
    if msg.subscribe_id in published:
        core.log.warning("duplicate subscribe id %d", msg.subscribe_id)
        _refuse(stream, ErrorCode.DUPLICATE)
        return
    if len(published) >= core.limits.max_subscriptions:
        _refuse(stream, ErrorCode.BOUNDS_EXCEEDED)
        return
    broadcast = normalize_path(msg.broadcast)
    if not _may_read(core, broadcast, stream):
        return
    route = core.mux.route(broadcast)
    if route is None:
        core.log.debug("subscribe %d to unknown broadcast %r", msg.subscribe_id, broadcast)
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    announcement, handler = route
    writer = TrackWriter(core, stream, msg, broadcast)
    published[msg.subscribe_id] = writer
    core.log.debug("serving subscription %d to %s/%s", msg.subscribe_id, broadcast, msg.track)
    try:
        await _first_of(
            _run_track_handler(core, handler, writer),
            _watch_subscriber(core, reader, writer),
            announcement.wait_ended(),
            writer.wait_finished(),
        )
        if announcement.error is not None and not announcement.active:
            writer.close_with_error(announcement.error)  # its publisher was lost: not a clean end
        elif not writer.closed:
            writer.close()
    finally:
        writer.abandon()
        published.pop(msg.subscribe_id, None)


async def _run_track_handler(core: SessionCore, handler: Any, writer: TrackWriter) -> None:
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
        core.log.exception("track handler for %s/%s failed", writer.broadcast, writer.track)
        writer.close_with_error(ErrorCode.CANCEL)


async def _watch_subscriber(core: SessionCore, reader: StreamReader, writer: TrackWriter) -> None:
    """Returns when the subscriber unsubscribes (FIN or reset); applies SUBSCRIBE_UPDATEs."""
    try:
        while (body := await reader.read_message_or_eof(core.limits.max_message_size)) is not None:
            writer.apply_update(core.codec.decode_subscribe_update(body))
    except StreamError:
        return
    except ProtocolError as exc:
        core.log.warning("subscription %d: %s", writer.subscribe_id, exc)
        writer.close_with_error(exc.code)


# -- fetch (lite-03+): one group, answered with its frames and FIN
async def serve_fetch(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    """Serve one FETCH from the cache, frame by frame through the scheduler.

    Frames are sent by reference (never joined into a copy of the group), at
    most ``Limits.max_fetches`` requests are served at once, and a reply the
    peer does not read within ``Limits.fetch_timeout`` is reset.
    """
    codec = core.codec
    limits = core.limits
    msg = codec.decode_fetch(await core.request(reader.read_message(limits.max_message_size)))
    if core.fetches >= limits.max_fetches:
        core.log.info("refusing fetch of %s/%s: %d already being served", msg.broadcast, msg.track, core.fetches)
        _refuse(stream, ErrorCode.BOUNDS_EXCEEDED)
        return
    if not _may_read(core, normalize_path(msg.broadcast), stream):
        return
    core.fetches += 1
    try:
        route = core.mux.route(normalize_path(msg.broadcast))
        fetch = getattr(route[1], "fetch_group", None) if route is not None else None
        frames: FetchResult | None = await fetch(msg.track, msg.group) if fetch is not None else None
        if frames is None:
            core.log.debug("fetch of %s/%s group %d: not available", msg.broadcast, msg.track, msg.group)
            _refuse(stream, ErrorCode.NOT_FOUND)
            return
        end = len(frames) if msg.end_frame is None else min(len(frames), msg.end_frame + 1)
        try:
            async with asyncio.timeout(limits.fetch_timeout):
                await _send_fetched(core, stream, frames[msg.start_frame:end], msg.priority, msg.group)
        except TimeoutError:
            core.log.info("fetch of %s/%s group %d: the peer did not read it within %.0fs", msg.broadcast,
                             msg.track, msg.group, limits.fetch_timeout)
            _refuse(stream, ErrorCode.TIMEOUT)
            return
    finally:
        core.fetches -= 1
    await _expect_fin(reader)


async def _send_fetched(core: SessionCore, stream: BidiStream, frames: FetchResult, priority: int, group: int) -> None:
    codec = core.codec
    scheduler = core.scheduler
    clock = codec.new_frame_clock()
    last = len(frames) - 1
    for index, (payload, timestamp) in enumerate(frames):
        if clock is not None:
            header = codec.encode_timed_frame_header(len(payload), clock, timestamp or 0)
        else:
            header = codec.encode_frame_header(len(payload))
        await scheduler.send(stream, header, payload, end=index == last, priority=priority, sequence=group)
        core.frames_sent += 1
        core.bytes_sent += len(payload)
    if not frames:
        stream.write(b"", end=True)


# -- track info (lite-05+)
async def serve_track(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    codec = core.codec
    msg = codec.decode_track_request(await core.request(reader.read_message(core.limits.max_message_size)))
    if not _may_read(core, normalize_path(msg.broadcast), stream):
        return
    route = core.mux.route(normalize_path(msg.broadcast))
    if route is None:
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    describe = getattr(route[1], "track_info", None)
    if describe is None:  # a plain handler: it decides when subscribed
        info: TrackInfo | None = TrackInfo(priority=0, max_latency_ms=0, timescale=DEFAULT_TIMESCALE)
    else:
        answer = describe(msg.track)  # a relay may have to ask its own upstream first
        info = await core.request(answer) if inspect.isawaitable(answer) else answer
    if info is None:
        _refuse(stream, ErrorCode.NOT_FOUND)
        return
    stream.write(codec.encode_track_info(info), end=True)
    await _expect_fin(reader)


# -- probe (lite-03+): the peer's bitrate and RTT reports; we read them and report nothing ourselves
async def serve_probe(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    codec = core.codec
    try:
        while (body := await reader.read_message_or_eof(core.limits.max_message_size)) is not None:
            probe = codec.decode_probe(body)
            core.log.debug("peer probe: bitrate=%s rtt=%s", probe.bitrate, probe.rtt_ms)
    except StreamError:
        return
    with contextlib.suppress(MoQError):
        stream.write(b"", end=True)


# -- goaway (lite-04+)
async def serve_goaway(core: SessionCore, stream: BidiStream, reader: StreamReader) -> None:
    codec = core.codec
    msg = codec.decode_goaway(await core.request(reader.read_message(core.limits.max_message_size)))
    core.goaway_received(msg.uri)
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
