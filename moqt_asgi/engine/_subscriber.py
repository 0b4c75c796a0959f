"""The subscriber's half of a core: streams we open to read from the peer.

:func:`subscribe`, :func:`announced`, :func:`fetch` and :func:`track_info`
open one bidi stream each and speak the negotiated version on it; the
:class:`~.session.Session` methods of the same names call these.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..protocol.errors import ErrorCode, MoQError, ProtocolError, SessionClosed, StreamError, SubscribeError
from ..protocol.lite06 import AnnounceType
from ..protocol.lite_wire import LiteBidi
from ..protocol.messages import (
    AnnouncePlease,
    Fetch,
    Subscribe,
    TrackInfo,
    TrackRequest,
)
from ..protocol.paths import join_path, normalize_path
from ..protocol.wire import encode_varint
from ..transport.base import BidiStream
from ._core import SessionCore
from ._reader import StreamReader
from .announce import AnnouncementReader
from .track import TrackReader


async def _read_response(core: SessionCore, reader: StreamReader) -> Any:
    """One subscribe-stream response, or ``None`` at FIN. Typed from lite-03 on."""
    codec = core.codec
    limit = core.limits.max_message_size
    if not core.features.typed_subscribe_responses:
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


async def subscribe(core: SessionCore, broadcast: str, track: str, *, priority: int = 0, ordered: bool = False,
                    max_latency_ms: int = 0, start_group: int | None = None,
                    end_group: int | None = None, wait_for_start: bool = True) -> TrackReader:
    codec = core.codec
    features = core.features
    broadcast = normalize_path(broadcast)
    subscribe_id = core.next_subscribe_id()
    stream = await core.connection.open_bi()
    reader = TrackReader(core, stream, subscribe_id, broadcast, track, priority)
    core.subscriptions[subscribe_id] = reader
    request = Subscribe(subscribe_id, broadcast, track, priority, ordered, max_latency_ms, start_group, end_group)
    stream.write(encode_varint(LiteBidi.SUBSCRIBE) + codec.encode_subscribe(request))
    stream_reader = StreamReader(stream)
    first = asyncio.ensure_future(_read_response(core, stream_reader))
    try:
        if features.subscribe_start_end:
            # lite-05+ says nothing until the first group exists: a group arriving counts as acceptance,
            # and a track that has no group yet is simply pending (refusals still surface on the reader).
            responded = asyncio.ensure_future(reader.wait_responded())
            try:
                await asyncio.wait({first, responded}, timeout=core.timeout if wait_for_start else 0,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                responded.cancel()
            if first.done():
                msg = first.result()
                if msg is None:
                    raise SubscribeError(ErrorCode.CANCEL, f"publisher ended {broadcast}/{track} before starting it")
                reader.apply_response(msg)
                first = None  # type: ignore[assignment]
        else:
            msg = await core.request(asyncio.shield(first))
            if msg is None:
                raise SubscribeError(ErrorCode.CANCEL, f"publisher ended {broadcast}/{track} before accepting it")
            reader.apply_response(msg)
            first = None  # type: ignore[assignment]
    except StreamError as exc:
        core.subscriptions.pop(subscribe_id, None)
        raise SubscribeError(exc.code, f"subscription to {broadcast}/{track} refused with code {exc.code}") from None
    except ProtocolError as exc:
        core.subscriptions.pop(subscribe_id, None)
        if first is not None:
            first.cancel()
        _refuse_answer(stream, exc)
        raise
    except BaseException:
        core.subscriptions.pop(subscribe_id, None)
        if first is not None:
            first.cancel()
        stream.reset(ErrorCode.CANCEL)
        raise
    core.spawn(_watch_publisher(core, reader, stream_reader, first), f"subscription-{subscribe_id}")
    return reader


async def _watch_publisher(core: SessionCore, track: TrackReader, reader: StreamReader,
                           pending: asyncio.Future[Any] | None) -> None:
    try:
        while True:
            if pending is not None:
                msg, pending = await pending, None
            else:
                msg = await _read_response(core, reader)
            if msg is None:
                break
            if not core.features.typed_subscribe_responses:  # lite-01/02: SUBSCRIBE_OK, then nothing but FIN
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a second subscribe response")
            track.apply_response(msg)
        await track.end_after_stragglers()
    except StreamError as exc:
        track.end(SubscribeError(exc.code, f"publisher aborted {track.broadcast}/{track.track} with code {exc.code}"))
    except MoQError as exc:
        track.end(exc)
        raise
    except asyncio.CancelledError:
        if pending is not None:
            pending.cancel()
        track.end(core.close_reason or SessionClosed(0, "session closed"))
        raise
    finally:
        core.subscriptions.pop(track.subscribe_id, None)


# -- announcements
async def announced(core: SessionCore, prefix: str) -> AnnouncementReader:
    codec = core.codec
    features = core.features
    limit = core.limits.max_message_size
    prefix = normalize_path(prefix)
    stream = await core.connection.open_bi()
    exclude = core.mux.hop_id if features.exclude_hop else 0
    stream.write(encode_varint(LiteBidi.ANNOUNCE) + codec.encode_announce_please(AnnouncePlease(prefix, exclude)))
    reader = StreamReader(stream)
    announcements = AnnouncementReader(stream, prefix, core.limits.max_announcements)
    state = _AnnounceState(core, announcements)
    try:
        if features.announce_init:
            # every active path in one message: bounded by its own limit, not the control-message one
            body = await core.request(reader.read_message(core.limits.max_announce_init_size))
            init = codec.decode_announce_init(body)
            for suffix in init.suffixes:
                announcements.apply(join_path(prefix, normalize_path(suffix)), True)
        elif features.announce_ok:
            ok = codec.decode_announce_ok(await core.request(reader.read_message(limit)))
            state.peer_hop = ok.hop_id
            for _ in range(ok.active_count):
                await core.request(state.read_one(reader))
    except ProtocolError as exc:
        _refuse_answer(stream, exc)
        raise
    except BaseException:
        stream.reset(ErrorCode.CANCEL)
        raise
    core.spawn(_read_announcements(announcements, reader, state), f"announced-{stream.stream_id}")
    return announcements


class _AnnounceState:
    def __init__(self, core: SessionCore, announcements: AnnouncementReader) -> None:
        self.core = core
        self.codec = core.codec
        self.announcements = announcements
        self.peer_hop: int | None = None
        self.ignored: set[str] = set()
        self.ids = self.codec.new_announce_ids(core.limits.max_announcements)

    async def read_one(self, reader: StreamReader) -> bool:
        """Read and apply one announcement; False at a clean FIN."""
        limit = self.core.limits.max_message_size
        refresh = False
        if self.ids is not None:
            if await reader.at_eof():
                return False
            msg_type = await reader.read_varint()
            msg = self.codec.decode_announcement(msg_type, await reader.read_message(limit))
            refresh = msg_type == AnnounceType.UPDATE
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
        grant = self.core.grant
        if active and grant is not None and not grant.can_publish(path):
            self.core.log.info("ignoring %r: the peer may not publish it", path)
            return self._ignore(path, refresh)
        if active and self.core.mux.hop_id in hops:
            self.core.log.debug("ignoring %r: its route already passes through us", path)
            return self._ignore(path, refresh)
        if path in self.ignored:
            if not active:
                self.ignored.discard(path)
            return True
        self.announcements.apply(path, active, hops, refresh=refresh)
        return True


    def _ignore(self, path: str, refresh: bool) -> bool:
        """Keep ``path`` from the reader (a loop, or not the peer's to publish); True: read on."""
        if path not in self.ignored and (len(self.ignored) + len(self.announcements.active)
                                         >= self.core.limits.max_announcements):
            raise ProtocolError(ErrorCode.TOO_LARGE, f"more than {self.core.limits.max_announcements} announcements")
        self.ignored.add(path)
        if refresh and path in self.announcements.active:
            self.announcements.apply(path, False)  # a route that turned into a loop ends here
        return True


async def _read_announcements(announcements: AnnouncementReader, reader: StreamReader, state: _AnnounceState) -> None:
    error: BaseException | None = None
    try:
        while await state.read_one(reader):
            pass
    except ProtocolError as exc:
        error = exc
        reader.stream.stop(exc.code)
        raise
    except (StreamError, SessionClosed) as exc:
        error = exc
        return
    finally:
        announcements.finish(error)


# -- fetch and track info
async def fetch_timed(core: SessionCore, broadcast: str, track: str, group: int, *,
                      priority: int = 0) -> list[tuple[bytes, int | None]]:
    """Like :func:`fetch`, each frame with its timestamp (lite-05+; ``None`` before)."""
    codec = core.codec
    if not core.features.fetch:
        raise MoQError(f"{core.version_name} has no FETCH")
    stream = await core.connection.open_bi()
    stream.write(encode_varint(LiteBidi.FETCH) + codec.encode_fetch(Fetch(normalize_path(broadcast), track, priority, group)))
    stream.write(b"", end=True)
    reader = StreamReader(stream)
    clock = codec.new_frame_clock()
    frames: list[tuple[bytes, int | None]] = []
    total = 0
    try:
        async with asyncio.timeout(core.timeout):
            while not await reader.at_eof():
                timestamp = clock.decode(await reader.read_varint()) if clock is not None else None
                size = await reader.read_varint()
                codec.check_frame_size(size)
                total += size
                if total > core.limits.max_message_size * 64 or len(frames) >= 1 << 16:
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


async def track_info(core: SessionCore, broadcast: str, track: str) -> TrackInfo:
    """The publisher's TRACK_INFO for a track (lite-05+)."""
    codec = core.codec
    if not core.features.track_stream:
        raise MoQError(f"{core.version_name} has no TRACK stream")
    stream = await core.connection.open_bi()
    # Our side stays open until TRACK_INFO is in: moq-rs reads an early FIN as the request being withdrawn.
    stream.write(encode_varint(LiteBidi.TRACK) + codec.encode_track_request(TrackRequest(normalize_path(broadcast), track)))
    reader = StreamReader(stream)
    try:
        info: TrackInfo = codec.decode_track_info(
            await core.request(reader.read_message(core.limits.max_message_size)))
        with contextlib.suppress(MoQError):
            stream.write(b"", end=True)
    except StreamError as exc:
        raise SubscribeError(exc.code, f"no track info for {broadcast}/{track} (code {exc.code})") from None
    except ProtocolError as exc:
        _refuse_answer(stream, exc)
        raise
    finally:
        with contextlib.suppress(MoQError):
            stream.stop(ErrorCode.CANCEL)
    return info


__all__ = ["announced", "fetch_timed", "subscribe", "track_info"]
