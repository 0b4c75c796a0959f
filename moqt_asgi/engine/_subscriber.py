"""The subscriber's half of a session: streams we open to read from the peer.

:func:`subscribe`, :func:`announced`, :func:`fetch` and :func:`track_info`
open one bidi stream each and speak the negotiated version on it; the
:class:`~.session.Session` methods of the same names call these.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError, SubscribeError
from ..protocol.lite_wire import LiteBidi
from ..protocol.messages import (
    AnnouncePlease,
    Fetch,
    Subscribe,
    SubscribeDrop,
    SubscribeEnd,
    SubscribeOk,
    SubscribeStart,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from ..protocol.paths import join_path, normalize_path
from ..protocol.wire import encode_varint
from ..transport.base import BidiStream
from ._reader import StreamReader
from .announce import AnnouncementReader
from .track import TrackReader

if TYPE_CHECKING:
    from .session import Session

MAX_DROP_NOTICES = 64
STRAGGLER_GRACE = 0.1
"""Seconds a cleanly ended subscription still accepts groups sent before its end (lite-01..04)."""
STRAGGLER_GAP = 0.5
"""lite-05+, where the end says which groups came before it: seconds the subscription waits for the
next of them to arrive (started again at each arrival, at most the session timeout in all), so groups
delayed by loss recovery are not cut off."""


async def _read_response(session: Session, reader: StreamReader) -> Any:
    """One subscribe-stream response, or ``None`` at FIN. Typed from lite-03 on."""
    codec: Any = session.codec
    limit = session.limits.max_message_size
    if not session.features.typed_subscribe_responses:
        body = await reader.read_message_or_eof(limit)
        return None if body is None else codec.decode_subscribe_ok(body)
    if await reader.at_eof():
        return None
    msg_type = await reader.read_varint()
    body = await reader.read_message(limit)
    return codec.decode_subscribe_response(msg_type, body)


def _refuse_answer(stream: BidiStream, exc: ProtocolError) -> None:
    """The answer to one of our requests broke the protocol: the caller gets ``exc``, the peer its code on this stream."""
    with contextlib.suppress(MoQError):
        stream.stop(exc.code)
        stream.reset(exc.code)


def _apply_response(track: TrackReader, msg: Any) -> None:
    if isinstance(msg, SubscribeOk | SubscribeStart):
        track._started_once = True
    if isinstance(msg, SubscribeStart):
        track.start_group = msg.group
    elif isinstance(msg, SubscribeEnd):
        track.end_group = msg.group
    elif isinstance(msg, SubscribeDrop):
        track.dropped_ranges.append((msg.start, msg.end, msg.error))
        del track.dropped_ranges[:-MAX_DROP_NOTICES]
    elif isinstance(msg, SubscribeOk):
        if msg.start_group is not None:
            track.start_group = msg.start_group
    track._responded.set()


async def subscribe(session: Session, broadcast: str, track: str, *, priority: int = 0, ordered: bool = False,
                    max_latency_ms: int = 0, start_group: int | None = None,
                    end_group: int | None = None, wait_for_start: bool = True) -> TrackReader:
    codec: Any = session.codec
    features = session.features
    broadcast = normalize_path(broadcast)
    subscribe_id = next(session._subscribe_ids)
    stream = await session.connection.open_bi()
    reader = TrackReader(session, stream, subscribe_id, broadcast, track, priority)
    session._subscriptions[subscribe_id] = reader
    request = Subscribe(subscribe_id, broadcast, track, priority, ordered, max_latency_ms, start_group, end_group)
    stream.write(encode_varint(LiteBidi.SUBSCRIBE) + codec.encode_subscribe(request))
    stream_reader = StreamReader(stream)
    first = asyncio.ensure_future(_read_response(session, stream_reader))
    try:
        if features.subscribe_start_end:
            # lite-05+ says nothing until the first group exists: a group arriving counts as acceptance,
            # and a track that has no group yet is simply pending (refusals still surface on the reader).
            responded = asyncio.ensure_future(reader._responded.wait())
            try:
                await asyncio.wait({first, responded}, timeout=session.timeout if wait_for_start else 0,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                responded.cancel()
            if first.done():
                msg = first.result()
                if msg is None:
                    raise SubscribeError(ErrorCode.CANCEL, f"publisher ended {broadcast}/{track} before starting it")
                _apply_response(reader, msg)
                first = None  # type: ignore[assignment]
        else:
            msg = await session._with_timeout(asyncio.shield(first))
            if msg is None:
                raise SubscribeError(ErrorCode.CANCEL, f"publisher ended {broadcast}/{track} before accepting it")
            _apply_response(reader, msg)
            first = None  # type: ignore[assignment]
    except StreamError as exc:
        session._subscriptions.pop(subscribe_id, None)
        raise SubscribeError(exc.code, f"subscription to {broadcast}/{track} refused with code {exc.code}") from None
    except ProtocolError as exc:
        session._subscriptions.pop(subscribe_id, None)
        if first is not None:
            first.cancel()
        _refuse_answer(stream, exc)
        raise
    except BaseException:
        session._subscriptions.pop(subscribe_id, None)
        if first is not None:
            first.cancel()
        stream.reset(ErrorCode.CANCEL)
        raise
    session._spawn(_watch_publisher(session, reader, stream_reader, first), f"subscription-{subscribe_id}")
    return reader


async def _watch_publisher(session: Session, track: TrackReader, reader: StreamReader,
                           pending: asyncio.Future[Any] | None) -> None:
    try:
        while True:
            if pending is not None:
                msg, pending = await pending, None
            else:
                msg = await _read_response(session, reader)
            if msg is None:
                break
            if not session.features.typed_subscribe_responses or (
                    isinstance(msg, SubscribeOk | SubscribeStart) and track._started_once):
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a second subscribe response")
            _apply_response(track, msg)
        await _await_stragglers(track)
        track._end()
    except StreamError as exc:
        track._end(SubscribeError(exc.code, f"publisher aborted {track.broadcast}/{track.track} with code {exc.code}"))
    except MoQError as exc:
        track._end(exc)
        raise
    except asyncio.CancelledError:
        if pending is not None:
            pending.cancel()
        track._end(session._close_reason or SessionClosed(0, "session closed"))
        raise
    finally:
        session._subscriptions.pop(track.subscribe_id, None)


async def _await_stragglers(track: TrackReader) -> None:
    """Groups sent before a track's clean end travel on their own streams and may arrive after it: take them a while longer.

    lite-05+ says where the track ended (SUBSCRIBE_END), so this returns as
    soon as the group before that bound is in; otherwise after :data:`STRAGGLER_GRACE`.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    known_end = track.end_group is not None
    deadline = started + (STRAGGLER_GAP if known_end else STRAGGLER_GRACE)
    limit = started + max(track.session.timeout, STRAGGLER_GAP)
    while not track._closed:
        end = track.end_group
        newest = track.newest_group
        if end is not None and (end <= (track.start_group or 0) or (newest is not None and newest >= end - 1)):
            return
        remaining = min(deadline, limit) - loop.time()
        if remaining <= 0:
            return
        track._arrived.clear()
        try:
            await asyncio.wait_for(track._arrived.wait(), remaining)
        except TimeoutError:
            return
        if known_end:
            deadline = loop.time() + STRAGGLER_GAP  # one more came: give the next its time too


def update(session: Session, track: TrackReader, msg: SubscribeUpdate) -> None:
    if not session.codec.accepts_subscribe_update:
        raise MoQError(f"{session.version_name} has no SUBSCRIBE_UPDATE")
    track.priority = msg.priority
    track._stream.write(session.codec.encode_subscribe_update(msg))


# -- announcements
async def announced(session: Session, prefix: str) -> AnnouncementReader:
    codec: Any = session.codec
    features = session.features
    limit = session.limits.max_message_size
    prefix = normalize_path(prefix)
    stream = await session.connection.open_bi()
    exclude = session.mux.hop_id if features.exclude_hop else 0
    stream.write(encode_varint(LiteBidi.ANNOUNCE) + codec.encode_announce_please(AnnouncePlease(prefix, exclude)))
    reader = StreamReader(stream)
    announcements = AnnouncementReader(stream, prefix, session.limits.max_announcements)
    state = _AnnounceState(session, announcements)
    try:
        if features.announce_init:
            # every active path in one message: bounded by its own limit, not the control-message one
            body = await session._with_timeout(reader.read_message(session.limits.max_announce_init_size))
            init = codec.decode_announce_init(body)
            for suffix in init.suffixes:
                announcements._update(join_path(prefix, normalize_path(suffix)), True)
        elif features.announce_ok:
            ok = codec.decode_announce_ok(await session._with_timeout(reader.read_message(limit)))
            state.peer_hop = ok.hop_id
            for _ in range(ok.active_count):
                await session._with_timeout(state.read_one(reader))
    except ProtocolError as exc:
        _refuse_answer(stream, exc)
        raise
    except BaseException:
        stream.reset(ErrorCode.CANCEL)
        raise
    session._spawn(_read_announcements(announcements, reader, state), f"announced-{stream.stream_id}")
    return announcements


class _AnnounceState:
    def __init__(self, session: Session, announcements: AnnouncementReader) -> None:
        self.session = session
        self.codec: Any = session.codec
        self.announcements = announcements
        self.peer_hop: int | None = None
        self.ignored: set[str] = set()
        self.ids: Any = None
        if session.features.announce_ids:
            from ..protocol.lite06 import AnnounceIds

            self.ids = AnnounceIds(session.limits.max_announcements)

    async def read_one(self, reader: StreamReader) -> bool:
        """Read and apply one announcement; False at a clean FIN."""
        limit = self.session.limits.max_message_size
        refresh = False
        if self.ids is not None:
            if await reader.at_eof():
                return False
            msg_type = await reader.read_varint()
            msg = self.codec.decode_announcement(msg_type, await reader.read_message(limit))
            refresh = msg_type == 2
            suffix, active = self.ids.apply(msg)
            hops = tuple(getattr(msg, "hops", ()))
        else:
            body = await reader.read_message_or_eof(limit)
            if body is None:
                return False
            announce = self.codec.decode_announce(body)
            suffix, active, hops = announce.suffix, announce.active, announce.hops
        if self.peer_hop is not None and active:
            hops = (*hops, self.peer_hop)
        path = join_path(self.announcements.prefix, normalize_path(suffix))
        grant = self.session.grant
        if active and grant is not None and not grant.can_publish(path):
            self.session.log.info("ignoring %r: the peer may not publish it", path)
            return self._ignore(path, refresh)
        if active and self.session.mux.hop_id in hops:
            self.session.log.debug("ignoring %r: its route already passes through us", path)
            return self._ignore(path, refresh)
        if path in self.ignored:
            if not active:
                self.ignored.discard(path)
            return True
        self.announcements._update(path, active, hops, refresh=refresh)
        return True


    def _ignore(self, path: str, refresh: bool) -> bool:
        """Keep ``path`` from the reader (a loop, or not the peer's to publish); True: read on."""
        if path not in self.ignored and (len(self.ignored) + len(self.announcements.active)
                                         >= self.session.limits.max_announcements):
            raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {self.session.limits.max_announcements} announcements")
        self.ignored.add(path)
        if refresh and path in self.announcements.active:
            self.announcements._update(path, False)  # a route that turned into a loop ends here
        return True


async def _read_announcements(announcements: AnnouncementReader, reader: StreamReader, state: _AnnounceState) -> None:
    try:
        while await state.read_one(reader):
            pass
    except ProtocolError as exc:
        announcements._fail(exc)
        reader.stream.stop(exc.code)
        raise
    except (StreamError, SessionClosed) as exc:
        announcements._fail(exc)
        return
    finally:
        announcements._finish()


# -- fetch and track info
async def fetch(session: Session, broadcast: str, track: str, group: int, *, priority: int = 0) -> list[bytes]:
    """The frames of one group from the publisher's cache (lite-03+)."""
    return [payload for payload, _ in await fetch_timed(session, broadcast, track, group, priority=priority)]


async def fetch_timed(session: Session, broadcast: str, track: str, group: int, *,
                      priority: int = 0) -> list[tuple[bytes, int | None]]:
    """Like :func:`fetch`, each frame with its timestamp (lite-05+; ``None`` before)."""
    codec: Any = session.codec
    if not session.features.fetch:
        raise MoQError(f"{session.version_name} has no FETCH")
    stream = await session.connection.open_bi()
    stream.write(encode_varint(LiteBidi.FETCH) + codec.encode_fetch(Fetch(normalize_path(broadcast), track, priority, group)))
    stream.write(b"", end=True)
    reader = StreamReader(stream)
    clock = codec.new_frame_clock() if session.features.frame_timestamps else None
    frames: list[tuple[bytes, int | None]] = []
    total = 0
    try:
        async with asyncio.timeout(session.timeout):
            while not await reader.at_eof():
                timestamp = clock.decode(await reader.read_varint()) if clock is not None else None
                size = await reader.read_varint()
                codec.check_frame_size(size)
                total += size
                if total > session.limits.max_message_size * 64 or len(frames) >= 1 << 16:
                    raise ProtocolError(ErrorCode.TOO_LARGE, "fetched group is too large")
                frames.append((await reader.read_exact(size), timestamp))
    except StreamError as exc:
        raise SubscribeError(exc.code, f"fetch of {broadcast}/{track} group {group} refused with code {exc.code}") from None
    except ProtocolError as exc:
        _refuse_answer(stream, exc)
        raise
    except BaseException:
        with contextlib.suppress(MoQError):
            stream.stop(ErrorCode.CANCEL)
        raise
    return frames


async def track_info(session: Session, broadcast: str, track: str) -> TrackInfo:
    """The publisher's TRACK_INFO for a track (lite-05+)."""
    codec: Any = session.codec
    if not session.features.track_stream:
        raise MoQError(f"{session.version_name} has no TRACK stream")
    stream = await session.connection.open_bi()
    stream.write(encode_varint(LiteBidi.TRACK) + codec.encode_track_request(TrackRequest(normalize_path(broadcast), track)),
                 end=True)
    reader = StreamReader(stream)
    try:
        info: TrackInfo = codec.decode_track_info(
            await session._with_timeout(reader.read_message(session.limits.max_message_size)))
    except StreamError as exc:
        raise SubscribeError(exc.code, f"no track info for {broadcast}/{track} (code {exc.code})") from None
    except ProtocolError as exc:
        _refuse_answer(stream, exc)
        raise
    finally:
        with contextlib.suppress(MoQError):
            stream.stop(ErrorCode.CANCEL)
    return info


__all__ = ["announced", "fetch", "fetch_timed", "subscribe", "track_info", "update"]
