"""Every message of every version as a fuzz target: how to encode it, how the engine reads it.

A :class:`Target` is one message *family* (``subscribe``, ``announce``...)
on one *variant*: a version (``moq-lite-03``) or, for the lite-01/02 setup
messages, a framing (``compat``, ``legacy``). Its ``encode`` gives the
message as a :data:`~.wire.Wire`; its ``decode`` reads bytes exactly as the
engine reads that message off a stream: the real :class:`StreamReader` (and
the real ``handshake`` readers and :class:`GroupReader` where the engine uses
them) over an in-memory :class:`ByteStream`, driven without an event loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.engine.handshake import _read_setup_body, read_client_setup, read_lite_setup
from moqt_asgi.engine.track import GroupReader
from moqt_asgi.protocol.codec import Codec
from moqt_asgi.protocol.errors import ErrorCode, ProtocolError, SessionClosed
from moqt_asgi.protocol.limits import DEFAULT_LIMITS, Limits
from moqt_asgi.protocol.lite_wire import FrameClock, LiteUni
from moqt_asgi.protocol.setup import (
    COMPAT_SERVER_TYPE,
    SetupFraming,
    decode_server_setup,
    encode_client_setup,
    encode_server_setup,
)
from moqt_asgi.protocol.versions import ALL_VERSIONS, GOMOQT_DIALECT, Version, features_of
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.transport.base import BidiStream, Connection, ReceiveStream, SendStream

from .wire import Framed, Wire, raw, split

TIGHT_LIMITS = Limits(max_message_size=512, max_path_length=24, max_frame_size=2048, max_versions=4,
                      max_parameters=4, max_stream_buffer=64 * 1024, max_announcements=16, max_subscriptions=8)
"""Small limits, so that generated and mutated inputs reach every bound often."""

LIMITS: dict[str, Limits] = {"default": DEFAULT_LIMITS, "tight": TIGHT_LIMITS}

BY_NAME: dict[str, Version] = {version.name: version for version in ALL_VERSIONS}


# -- bytes as a stream, read without an event loop ------------------------------------------

class ByteStream(BidiStream):
    """A receive stream holding ``data`` then FIN, handed out ``chunk`` bytes at a time.

    Records the largest number of bytes a reader ever *waited for* (``min_bytes``):
    a reader that trusts a lying length would ask for it here before reading it.
    """

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self.stream_id = 0
        self.data = data
        self.pos = 0
        self.chunk = max(1, chunk)
        self.largest_wait = 0
        self.stopped: int | None = None
        self.written = bytearray()

    async def read(self, max_bytes: int = 65536, min_bytes: int = 1) -> bytes:
        self.largest_wait = max(self.largest_wait, min_bytes)
        if max_bytes < 1:
            raise AssertionError(f"read of {max_bytes} bytes")
        size = min(max_bytes, max(self.chunk, min_bytes))
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def stop(self, code: int) -> None:
        self.stopped = code

    def write(self, data: bytes, end: bool = False) -> None:
        self.written += data

    def reset(self, code: int) -> None:
        pass

    def backlog(self) -> int:
        return 0

    def on_stopped(self, callback: Callable[[int], None]) -> None:
        pass


class OneStream(Connection):
    """A connection whose peer opened exactly ``stream`` (bidi or uni, whichever is accepted first)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream: ByteStream | None = stream

    def _take(self) -> ByteStream:
        if self.stream is None:
            raise SessionClosed(0, "no more streams")
        stream, self.stream = self.stream, None
        return stream

    async def accept_bi(self) -> BidiStream:
        return self._take()

    async def accept_uni(self) -> ReceiveStream:
        return self._take()

    async def open_bi(self) -> BidiStream:
        raise AssertionError("a decoder opened a stream")

    async def open_uni(self) -> SendStream:
        raise AssertionError("a decoder opened a stream")

    def close(self, code: int = 0, reason: str = "") -> None:
        pass

    async def wait_closed(self) -> SessionClosed:
        raise AssertionError("a decoder waited for the connection")

    def backlog(self) -> int:
        return 0

    def on_writable(self, callback: Callable[[], None]) -> None:
        callback()

    @property
    def is_closed(self) -> bool:
        return False


class Suspended(RuntimeError):
    """A decoder waited for something other than bytes (it must not: all its bytes are there)."""


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never truly suspends (every await is on a :class:`ByteStream`)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise Suspended("decoder suspended")


# -- targets -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Decoded:
    value: Any
    reader: StreamReader | None
    """The reader left after the message (``None`` where nothing follows); a round trip must leave it at FIN."""
    same_variant: bool = True
    """False if the bytes were read as another variant (a mutated setup framing byte): no re-encoding then."""


Encode = Callable[[Limits, Any], Wire]
Decode = Callable[[Limits, ByteStream], Coroutine[Any, Any, Decoded]]


def message_limit(limits: Limits) -> int:
    return limits.max_message_size


def frame_limit(limits: Limits) -> int:
    return limits.max_frame_size


def always(value: Any) -> bool:
    return True


def same_limits(limits: Limits) -> Limits:
    return limits


def with_slash_room(limits: Limits) -> Limits:
    """gomoqt's canonical form of a path read from the wire can be two bytes longer than what was read
    (``"/a"`` and ``"a"`` are both ``"/a/"`` as a prefix): room for that when a decoded value is sent back."""
    return dataclasses.replace(limits, max_path_length=limits.max_path_length + 2,
                               max_message_size=limits.max_message_size + 8)


@dataclass(frozen=True, slots=True)
class Target:
    family: str
    variant: str
    encode: Encode
    decode: Decode
    version: Version | None = None
    """The version whose codec this is (``None`` for the setup framings)."""
    wait_limit: Callable[[Limits], int] = message_limit
    """The most bytes a decoder may wait for at once: what the limits let one message or frame declare."""
    reencodes: Callable[[Any], bool] = always
    """Whether a decoded value can be sent back as is (gomoqt sends no ANNOUNCE for an empty suffix)."""
    reencode_limits: Callable[[Limits], Limits] = same_limits
    """The limits a decoded value, sent back, is read under again (a dialect that rewrites paths needs room)."""

    @property
    def name(self) -> str:
        return f"{self.family}@{self.variant}"

    def codec(self, limits: Limits) -> Any:
        assert self.version is not None
        return codec_for(self.version, limits)


@functools.lru_cache(maxsize=64)
def codec_for(version: Version, limits: Limits) -> Codec:
    return version.new_codec(limits)


def _message(decode_name: str, *, typed: bool = False) -> Callable[[Version], Decode]:
    """A decoder for a size-prefixed (``typed``: type, size, body) message read by ``read_message``."""
    def for_version(version: Version) -> Decode:
        async def decode(limits: Limits, stream: ByteStream) -> Decoded:
            codec: Any = codec_for(version, limits)
            reader = StreamReader(stream)
            if typed:
                msg_type = await reader.read_varint()
                body = await reader.read_message(limits.max_message_size)
                return Decoded(getattr(codec, decode_name)(msg_type, body), reader)
            return Decoded(getattr(codec, decode_name)(await reader.read_message(limits.max_message_size)), reader)
        return decode
    return for_version


def _framed(encode_name: str, *, heads: int = 0) -> Callable[[Version], Encode]:
    def for_version(version: Version) -> Encode:
        def encode(limits: Limits, msg: Any) -> Wire:
            return (split(bytes(getattr(codec_for(version, limits), encode_name)(msg)), heads=heads),)
        return encode
    return for_version


def _group_header_decoder(version: Version) -> Decode:
    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        reader = StreamReader(stream)
        kind = await reader.read_varint()
        if kind != LiteUni.GROUP:  # the engine refuses the stream (lite-03+) or closes the session
            raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, f"uni stream type {kind:#x}")
        return Decoded(codec_for(version, limits).decode_group_header(await reader.read_message(limits.max_message_size)),
                       reader)
    return decode


def _frames_encoder(version: Version) -> Encode:
    """Frames as on a group stream after its header: ``[timestamp delta,] size, payload`` each."""
    def encode(limits: Limits, frames: tuple[tuple[bytes, int], ...]) -> Wire:
        clock = FrameClock() if features_of(version.codec).frame_timestamps else None
        return tuple(Framed(clock.encode(timestamp) if clock is not None else b"", "varint", payload)
                     for payload, timestamp in frames)
    return encode


def _frames_decoder(version: Version) -> Decode:
    """Reads frames with the engine's own :class:`GroupReader` until the stream's FIN."""
    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        timestamps = features_of(version.codec).frame_timestamps
        session = SimpleNamespace(codec=codec_for(version, limits), limits=limits, take_frame_room=lambda size: True,
                                  give_frame_room=lambda size: None, frames_received=0, bytes_received=0)
        track = SimpleNamespace(_timestamps=timestamps, session=session)
        reader = StreamReader(stream)
        group = GroupReader(cast(Any, track), reader, 0)
        frames = []
        while (payload := await group.read_frame()) is not None:
            frames.append((payload, group.timestamp if timestamps else 0))
        return Decoded(tuple(frames), reader)
    return decode


def _lite_setup_encoder(version: Version) -> Encode:
    def encode(limits: Limits, msg: Any) -> Wire:
        return (split(bytes(cast(Any, codec_for(version, limits)).encode_setup_stream(msg)), heads=1),)
    return encode


def _lite_setup_decoder(version: Version) -> Decode:
    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        setup = await read_lite_setup(OneStream(stream), codec_for(version, limits), limits)
        return Decoded(setup, None)  # the setup stream ends after its one message: FIN is not checked by the engine
    return decode


def _datagram_encoder(version: Version) -> Encode:
    def encode(limits: Limits, msg: Any) -> Wire:
        return (raw(bytes(cast(Any, codec_for(version, limits)).encode_datagram(msg))),)
    return encode


def _datagram_decoder(version: Version) -> Decode:
    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        stream.pos = len(stream.data)
        return Decoded(cast(Any, codec_for(version, limits)).decode_datagram(stream.data), None)
    return decode


def _client_setup_target(framing: SetupFraming) -> Target:
    def encode(limits: Limits, msg: Any) -> Wire:
        return (split(encode_client_setup(framing, msg), heads=1, length="u16" if framing is SetupFraming.COMPAT else "varint"),)

    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        offer = await read_client_setup(OneStream(stream), limits)
        return Decoded(offer.setup, offer.reader, same_variant=offer.framing is framing)

    return Target("client_setup", framing.name.lower(), encode, decode)


def _server_setup_target(framing: SetupFraming) -> Target:
    compat = framing is SetupFraming.COMPAT

    def encode(limits: Limits, msg: Any) -> Wire:
        return (split(encode_server_setup(framing, msg), heads=1 if compat else 0, length="u16" if compat else "varint"),)

    async def decode(limits: Limits, stream: ByteStream) -> Decoded:
        """As :func:`moqt_asgi.engine.handshake.client_setup` reads the answer (its timeout needs a loop)."""
        reader = StreamReader(stream)
        if compat:
            kind = await reader.read_varint()
            if kind != COMPAT_SERVER_TYPE:
                raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected SERVER_SETUP (0x21), got {kind:#x}")
        body = await _read_setup_body(reader, framing, limits.max_message_size)
        return Decoded(decode_server_setup(framing, body, limits), reader)

    return Target("server_setup", framing.name.lower(), encode, decode)


# family -> (versions having it, encoder factory, decoder factory)
_Family = tuple[Callable[[Version], bool], Callable[[Version], Encode], Callable[[Version], Decode]]


def _has(flag: str) -> Callable[[Version], bool]:
    return lambda version: bool(getattr(features_of(version.codec), flag))


def _untyped_subscribe_ok(version: Version) -> bool:
    return not features_of(version.codec).typed_subscribe_responses


def _typed_subscribe_ok(version: Version) -> bool:
    return features_of(version.codec).typed_subscribe_responses


def _any(version: Version) -> bool:
    return True


def _subscribe_response_encoder(version: Version) -> Encode:
    return _framed("encode_subscribe_response", heads=1)(version)


_FAMILIES: dict[str, _Family] = {
    "session_info": (_has("session_stream"), _framed("encode_session_info"), _message("decode_session_info")),
    "announce_please": (_any, _framed("encode_announce_please"), _message("decode_announce_please")),
    "announce_init": (_has("announce_init"), _framed("encode_announce_init"), _message("decode_announce_init")),
    "announce": (lambda v: not features_of(v.codec).announce_ids, _framed("encode_announce"), _message("decode_announce")),
    "announce_ok": (_has("announce_ok"), _framed("encode_announce_ok"), _message("decode_announce_ok")),
    "announcement": (_has("announce_ids"), _framed("encode_announcement", heads=1),
                     _message("decode_announcement", typed=True)),
    "subscribe": (_any, _framed("encode_subscribe"), _message("decode_subscribe")),
    "subscribe_ok": (_untyped_subscribe_ok, _framed("encode_subscribe_ok"), _message("decode_subscribe_ok")),
    "subscribe_response": (_typed_subscribe_ok, _subscribe_response_encoder,
                           _message("decode_subscribe_response", typed=True)),
    "subscribe_update": (_has("subscribe_update"), _framed("encode_subscribe_update"), _message("decode_subscribe_update")),
    "group_header": (_any, _framed("encode_group_header", heads=1), _group_header_decoder),
    "frames": (_any, _frames_encoder, _frames_decoder),
    "fetch": (_has("fetch"), _framed("encode_fetch"), _message("decode_fetch")),
    "probe": (_has("probe"), _framed("encode_probe"), _message("decode_probe")),
    "goaway": (_has("goaway"), _framed("encode_goaway"), _message("decode_goaway")),
    "track_request": (_has("track_stream"), _framed("encode_track_request"), _message("decode_track_request")),
    "track_info": (_has("track_stream"), _framed("encode_track_info"), _message("decode_track_info")),
    "lite_setup": (_has("setup_stream"), _lite_setup_encoder, _lite_setup_decoder),
    "datagram": (_has("datagrams"), _datagram_encoder, _datagram_decoder),
}


_REENCODES: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("announce", "gomoqt"): lambda msg: bool(msg.suffix),
    ("announce_init", "gomoqt"): lambda msg: all(msg.suffixes),
}
"""Decoded values a target's encoder deliberately does not send as they are."""


def _build() -> tuple[Target, ...]:
    targets = [_client_setup_target(f) for f in SetupFraming] + [_server_setup_target(f) for f in SetupFraming]
    for family, (has, encoder, decoder) in _FAMILIES.items():
        for version in ALL_VERSIONS:
            if has(version):
                wait_limit = frame_limit if family == "frames" else message_limit
                targets.append(Target(family, version.name, encoder(version), decoder(version), version, wait_limit,
                                      _REENCODES.get((family, version.name), always),
                                      with_slash_room if version is GOMOQT_DIALECT else same_limits))
    return tuple(targets)


TARGETS: tuple[Target, ...] = _build()
"""Every target, setup framings first, then each family in every version that has it."""

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(target.family for target in TARGETS))
TARGETS_BY_NAME: dict[str, Target] = {target.name: target for target in TARGETS}


def targets_of(family: str) -> tuple[Target, ...]:
    return tuple(target for target in TARGETS if target.family == family)


def stream_type(value: int) -> bytes:
    return encode_varint(value)


__all__ = [
    "BY_NAME",
    "FAMILIES",
    "LIMITS",
    "TARGETS",
    "TARGETS_BY_NAME",
    "TIGHT_LIMITS",
    "ByteStream",
    "Decoded",
    "OneStream",
    "Suspended",
    "Target",
    "codec_for",
    "run_sync",
    "stream_type",
    "targets_of",
]
