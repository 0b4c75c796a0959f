"""Hypothesis strategies: valid messages for every target, then mutated and arbitrary bytes.

:func:`messages` builds values the target's version can carry and its
:class:`~moqt_asgi.protocol.limits.Limits` accept, so ``decode(encode(m)) == m``
must hold for every one of them. :func:`mutated_inputs` encodes such a value
and damages it (:mod:`.mutations`: flipped, inserted, deleted bytes, cuts,
length prefixes that lie, non-minimal and near-2**62 varints);
:func:`arbitrary_inputs` is the message's type bytes followed by noise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from moqt_asgi.protocol.limits import Limits
from moqt_asgi.protocol.lite03 import MAX_URI_LENGTH
from moqt_asgi.protocol.lite05 import SetupParam
from moqt_asgi.protocol.lite_wire import MAX_DATAGRAM_BODY, MAX_HOPS, HopEncoding
from moqt_asgi.protocol.messages import (
    UNLIMITED_MAX_LATENCY_MS,
    Announce,
    AnnounceEnd,
    AnnounceInit,
    AnnounceOk,
    AnnouncePlease,
    AnnounceStart,
    AnnounceUpdate,
    ClientSetup,
    Datagram,
    Fetch,
    Goaway,
    GroupHeader,
    LiteSetup,
    Probe,
    ServerSetup,
    SessionInfo,
    Subscribe,
    SubscribeDrop,
    SubscribeEnd,
    SubscribeOk,
    SubscribeStart,
    SubscribeUpdate,
    TrackInfo,
    TrackRequest,
)
from moqt_asgi.protocol.setup import SetupFraming
from moqt_asgi.protocol.versions import GOMOQT_DIALECT, features_of
from moqt_asgi.protocol.wire import MAX_VARINT, encode_varint

from .mutations import Mutation, apply, interesting_values, mutation_ops
from .targets import LIMITS, Target
from .wire import Wire, varint_of_width

CHUNKS = (1, 2, 3, 7, 64, 1 << 20)
"""How many bytes the fake stream hands out per read: exercises the reader's buffer edges."""


# -- building blocks -----------------------------------------------------------------------

_EDGES = (0, 63, 64, (1 << 14) - 1, 1 << 14, (1 << 30) - 1, 1 << 30, MAX_VARINT - 1, MAX_VARINT)
_VARINTS = st.one_of(st.integers(0, 63), st.integers(0, MAX_VARINT), st.sampled_from(_EDGES))
_OPTIONAL_GROUPS = st.none() | st.integers(0, MAX_VARINT - 1) | st.sampled_from((0, 1, MAX_VARINT - 1))
_PRIORITIES = st.integers(0, 255)
_START_GROUPS = st.none() | st.integers(1, MAX_VARINT)


def varints() -> st.SearchStrategy[int]:
    """QUIC varint values, with the edges (2**6, 2**14, 2**30, 2**62 - 1) drawn often."""
    return _VARINTS


def optional_groups() -> st.SearchStrategy[int | None]:
    """A group or frame bound: ``None``, or a value whose ``n + 1`` encoding still fits a varint."""
    return _OPTIONAL_GROUPS


def priorities() -> st.SearchStrategy[int]:
    return _PRIORITIES


def _fits(text: str, limit: int) -> bool:
    return len(text.encode("utf-8")) <= limit


@functools.lru_cache(maxsize=256)
def names(limit: int, known: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """A track name, suffix or path of at most ``limit`` UTF-8 bytes, sometimes exactly ``limit``."""
    choices = [st.text(max_size=min(24, limit // 4)), st.integers(max(0, limit - 2), limit).map(lambda n: "a" * n)]
    if known:
        choices.insert(0, st.sampled_from(known))
    return st.one_of(*choices).filter(lambda text: _fits(text, limit))


@functools.lru_cache(maxsize=256)
def normalized_paths(limit: int, known: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """A relative path with no empty segment (what gomoqt's absolute paths turn into)."""
    segment = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=6)
    generated = st.lists(segment, max_size=4).map("/".join)
    return (st.sampled_from(known) | generated if known else generated).filter(lambda text: _fits(text, limit))


@dataclass(frozen=True)
class Names:
    """Broadcast paths and track names to draw from besides random text (the engine fuzz uses its app's)."""

    paths: tuple[str, ...] = ()
    tracks: tuple[str, ...] = ()


NO_NAMES = Names()


def _hops(encoding: HopEncoding) -> st.SearchStrategy[tuple[int, ...]]:
    if encoding is HopEncoding.NONE:
        return st.just(())
    if encoding is HopEncoding.COUNT:
        return st.integers(0, MAX_HOPS).map(lambda n: (0,) * n)  # lite-03 carries only the count
    return st.lists(varints(), max_size=MAX_HOPS).map(tuple)


@dataclass(frozen=True)
class _Context:
    target: Target
    limits: Limits
    names: Names = field(default=NO_NAMES)

    @property
    def codec(self) -> Any:
        return self.target.codec(self.limits)

    @property
    def features(self) -> Any:
        assert self.target.version is not None
        return features_of(self.target.version.codec)

    @property
    def gomoqt(self) -> bool:
        return self.target.version is GOMOQT_DIALECT

    def path(self) -> st.SearchStrategy[str]:
        limit = self.limits.max_path_length
        if self.gomoqt:
            return normalized_paths(limit - 2, self.names.paths)
        return names(limit, self.names.paths)

    def track(self) -> st.SearchStrategy[str]:
        return names(self.limits.max_path_length, self.names.tracks)

    def suffix(self) -> st.SearchStrategy[str]:
        strategy = names(self.limits.max_path_length)
        return strategy.filter(bool) if self.gomoqt else strategy


# -- one builder per family ----------------------------------------------------------------------

def _setup_parameters(framing: SetupFraming, limits: Limits) -> st.SearchStrategy[dict[int, int | bytes]]:
    def value(key: int) -> st.SearchStrategy[int | bytes]:
        if framing is SetupFraming.COMPAT and key % 2 == 0:
            return varints()
        return st.binary(max_size=48)

    keys = st.lists(varints(), unique=True, max_size=min(limits.max_parameters, 6))
    return keys.flatmap(lambda ks: st.tuples(*(value(k) for k in ks)).map(lambda vs: dict(zip(ks, vs, strict=True))))


def _client_setup(ctx: _Context) -> st.SearchStrategy[Any]:
    framing = SetupFraming[ctx.target.variant.upper()]
    versions = st.lists(varints(), min_size=1, max_size=min(ctx.limits.max_versions, 8)).map(tuple)
    return st.builds(ClientSetup, versions, _setup_parameters(framing, ctx.limits))


def _server_setup(ctx: _Context) -> st.SearchStrategy[Any]:
    framing = SetupFraming[ctx.target.variant.upper()]
    return st.builds(ServerSetup, varints(), _setup_parameters(framing, ctx.limits))


def _announce_please(ctx: _Context) -> st.SearchStrategy[Any]:
    exclude = varints() if ctx.features.exclude_hop else st.just(0)
    return st.builds(AnnouncePlease, ctx.path(), exclude)


def _announce_init(ctx: _Context) -> st.SearchStrategy[Any]:
    suffixes = st.lists(ctx.suffix(), max_size=min(ctx.limits.max_announcements, 6)).map(tuple)
    return st.builds(AnnounceInit, suffixes)


def _announce(ctx: _Context) -> st.SearchStrategy[Any]:
    return st.builds(Announce, st.booleans(), ctx.suffix(), _hops(ctx.features.hops))


def _announcement(ctx: _Context) -> st.SearchStrategy[Any]:
    hops = _hops(HopEncoding.IDS)
    return st.one_of(
        st.builds(AnnounceStart, ctx.suffix(), hops, varints(), varints()),
        st.builds(AnnounceEnd, varints()),
        st.builds(AnnounceUpdate, varints(), hops, varints(), varints()),
    )


def _frame_bounds(draw: st.DrawFn) -> tuple[int | None, int | None, int, int | None]:
    """lite-06 bounds: a start group of 0 reads as none; an end frame needs an end group."""
    start_group = draw(_START_GROUPS)
    end_group = draw(optional_groups())
    start_frame = draw(varints())
    end_frame = draw(optional_groups()) if end_group is not None else None
    return start_group, end_group, start_frame, end_frame


def _subscribe(ctx: _Context) -> st.SearchStrategy[Any]:
    features = ctx.features

    path, track = ctx.path(), ctx.track()

    @st.composite
    def build(draw: st.DrawFn) -> Subscribe:
        head = (draw(varints()), draw(path), draw(track), draw(priorities()))
        if not features.subscribe_ranges:
            return Subscribe(*head)
        if features.frame_ranges:
            start_group, end_group, start_frame, end_frame = _frame_bounds(draw)
            return Subscribe(*head, False, draw(varints()), start_group, end_group, start_frame, end_frame)
        return Subscribe(*head, draw(st.booleans()), draw(varints()), draw(optional_groups()), draw(optional_groups()))

    return build()


def _subscribe_update(ctx: _Context) -> st.SearchStrategy[Any]:
    features = ctx.features

    @st.composite
    def build(draw: st.DrawFn) -> SubscribeUpdate:
        priority = draw(priorities())
        if not features.subscribe_ranges:
            return SubscribeUpdate(priority)
        if features.frame_ranges:
            start_group, end_group, start_frame, end_frame = _frame_bounds(draw)
            return SubscribeUpdate(priority, False, draw(varints()), start_group, end_group, start_frame, end_frame)
        return SubscribeUpdate(priority, draw(st.booleans()), draw(varints()), draw(optional_groups()),
                               draw(optional_groups()))

    return build()


def _subscribe_ok(ctx: _Context) -> st.SearchStrategy[Any]:
    if ctx.codec.subscribe_ok_has_priority:
        return st.builds(SubscribeOk, priorities())
    return st.just(SubscribeOk())


def _drops() -> st.SearchStrategy[SubscribeDrop]:
    return st.tuples(varints(), varints(), varints()).map(lambda t: SubscribeDrop(min(t[0], t[1]), max(t[0], t[1]), t[2]))


def _subscribe_response(ctx: _Context) -> st.SearchStrategy[Any]:
    if ctx.features.subscribe_start_end:
        return st.one_of(st.builds(SubscribeStart, varints()), st.builds(SubscribeEnd, varints()), _drops())
    ok = st.builds(SubscribeOk, priorities(), st.booleans(), varints(), optional_groups(), optional_groups())
    return st.one_of(ok, _drops())


def _group_header(ctx: _Context) -> st.SearchStrategy[Any]:
    frame_start = varints() if ctx.features.frame_ranges else st.just(0)
    return st.builds(GroupHeader, varints(), varints(), frame_start)


def _frames(ctx: _Context) -> st.SearchStrategy[Any]:
    limit = ctx.limits.max_frame_size
    # Near-limit payloads are filler that does not read as a run of empty frames once the framing is broken.
    payloads = st.binary(max_size=32) | st.integers(max(0, min(limit, 4096) - 2), min(limit, 4096)).map(b"\xa5".__mul__)
    if not ctx.features.frame_timestamps:
        return st.lists(payloads.map(lambda p: (p, 0)), max_size=6).map(tuple)
    # Timestamps as deltas a frame clock can carry (|delta| < 2**61), kept inside 0..2**62-1.
    deltas = st.integers(-(1 << 61), (1 << 61) - 1) | st.integers(-3, 3)

    def timed(pairs: list[tuple[bytes, int]]) -> tuple[tuple[bytes, int], ...]:
        now, out = 0, []
        for payload, delta in pairs:
            now = min(MAX_VARINT, max(0, now + delta))
            out.append((payload, now))
        return tuple(out)

    return st.lists(st.tuples(payloads, deltas), max_size=6).map(timed)


def _fetch(ctx: _Context) -> st.SearchStrategy[Any]:
    head = (ctx.path(), ctx.track(), priorities(), varints())
    if ctx.features.frame_ranges:
        return st.builds(Fetch, *head, varints(), optional_groups())
    return st.builds(Fetch, *head)


def _probe(ctx: _Context) -> st.SearchStrategy[Any]:
    measured = st.none() | st.integers(1, MAX_VARINT)  # 0 is "unknown" on the wire, i.e. None
    return st.builds(Probe, measured, measured if ctx.features.probe_rtt else st.none())


def _goaway(ctx: _Context) -> st.SearchStrategy[Any]:
    return st.builds(Goaway, names(min(MAX_URI_LENGTH, ctx.limits.max_message_size - 8)))


def _track_info(ctx: _Context) -> st.SearchStrategy[Any]:
    """A retention in milliseconds (0: no limit, which travels as 2**53 - 1), or the latest group only."""
    ordered = st.booleans() if ctx.codec.track_info_has_ordered else st.just(False)
    timescale = st.integers(1, MAX_VARINT)
    retention = varints().filter(lambda ms: ms != UNLIMITED_MAX_LATENCY_MS)  # that value reads back as 0
    return (st.builds(TrackInfo, priorities(), retention, timescale, ordered)
            | st.builds(TrackInfo, priorities(), st.just(0), timescale, ordered, latest_only=st.just(True)))


def _lite_setup(ctx: _Context) -> st.SearchStrategy[Any]:
    known = {int(param) for param in SetupParam}
    keys = st.lists(varints().filter(lambda k: k not in known), unique=True, max_size=3)
    extensions = keys.flatmap(lambda ks: st.tuples(*(st.binary(max_size=24) for _ in ks)).map(
        lambda vs: tuple(sorted(zip(ks, vs, strict=True)))))
    path = st.none() | names(ctx.limits.max_path_length) | st.just("/room?token=abc")
    setup = st.builds(LiteSetup, st.integers(0, 2), path, st.sampled_from((None, 1, 2)), st.none() | varints(),
                      st.none() | st.integers(1, MAX_VARINT), extensions)
    return setup.filter(lambda s: _setup_params(s) <= ctx.limits.max_parameters)


def _setup_params(setup: LiteSetup) -> int:
    fields = (setup.probe, setup.path is not None, setup.role is not None, setup.cost is not None, setup.origin)
    return sum(1 for present in fields if present) + len(setup.extensions)


def _datagram(ctx: _Context) -> st.SearchStrategy[Any]:
    payloads = st.binary(max_size=64) | st.binary(min_size=1150, max_size=1176)
    return st.builds(Datagram, varints(), varints(), varints(), payloads).filter(
        lambda d: _datagram_size(d) <= MAX_DATAGRAM_BODY)


def _datagram_size(msg: Datagram) -> int:
    return len(encode_varint(msg.subscribe_id) + encode_varint(msg.sequence) + encode_varint(msg.timestamp)) + len(msg.payload)


_BUILDERS: dict[str, Callable[[_Context], st.SearchStrategy[Any]]] = {
    "client_setup": _client_setup,
    "server_setup": _server_setup,
    "session_info": lambda ctx: st.builds(SessionInfo, varints()),
    "announce_please": _announce_please,
    "announce_init": _announce_init,
    "announce": _announce,
    "announce_ok": lambda ctx: st.builds(AnnounceOk, varints(), st.integers(0, ctx.limits.max_announcements)),
    "announcement": _announcement,
    "subscribe": _subscribe,
    "subscribe_ok": _subscribe_ok,
    "subscribe_response": _subscribe_response,
    "subscribe_update": _subscribe_update,
    "group_header": _group_header,
    "frames": _frames,
    "fetch": _fetch,
    "probe": _probe,
    "goaway": _goaway,
    "track_request": lambda ctx: st.builds(TrackRequest, ctx.path(), ctx.track()),
    "track_info": _track_info,
    "lite_setup": _lite_setup,
    "datagram": _datagram,
}


def _within_limits(target: Target, limits: Limits, msg: Any) -> bool:
    """Every body fits ``max_message_size`` (frames: ``max_frame_size``), as a peer's input must."""
    limit = target.wait_limit(limits)
    return all(len(part.body) <= limit for part in target.encode(limits, msg))


@functools.lru_cache(maxsize=1024)
def messages(target: Target, limits: Limits, names_: Names = NO_NAMES) -> st.SearchStrategy[Any]:
    """Valid values of ``target``'s message under ``limits`` (built once per arguments)."""
    strategy = _BUILDERS[target.family](_Context(target, limits, names_))
    return strategy.filter(lambda msg: _within_limits(target, limits, msg))


# -- inputs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FuzzInput:
    """Bytes for one target's decoder, and where they came from."""

    target: Target
    limits_name: str
    data: bytes
    chunk: int = 1 << 20
    message: Any = None
    ops: tuple[Mutation, ...] = ()

    @property
    def limits(self) -> Limits:
        return LIMITS[self.limits_name]

    def __repr__(self) -> str:
        origin = f" from {self.message!r} by {list(self.ops)!r}" if self.ops else ""
        return f"FuzzInput({self.target.name}, {self.limits_name}, {self.data.hex()!r}, chunk={self.chunk}{origin})"


def limits_names() -> st.SearchStrategy[str]:
    return st.sampled_from(tuple(LIMITS))


@functools.lru_cache(maxsize=256)
def valid_messages(target: Target, names_: Names = NO_NAMES) -> st.SearchStrategy[tuple[str, Any]]:
    """``(limits name, message)`` pairs."""
    return st.one_of(*(st.tuples(st.just(name), messages(target, limits, names_)) for name, limits in LIMITS.items()))


@functools.lru_cache(maxsize=256)
def mutated_inputs(target: Target) -> st.SearchStrategy[FuzzInput]:
    return _mutated_inputs(target)


@functools.lru_cache(maxsize=256)
def arbitrary_inputs(target: Target) -> st.SearchStrategy[FuzzInput]:
    return _arbitrary_inputs(target)


@st.composite
def _mutated_inputs(draw: st.DrawFn, target: Target) -> FuzzInput:
    limits_name, msg = draw(valid_messages(target))
    limits = LIMITS[limits_name]
    wire = target.encode(limits, msg)
    ops = draw(mutation_ops(limits))
    return FuzzInput(target, limits_name, apply(wire, ops), draw(st.sampled_from(CHUNKS)), msg, tuple(ops))


@st.composite
def _arbitrary_inputs(draw: st.DrawFn, target: Target) -> FuzzInput:
    """The message's own leading bytes (stream or message type), then anything."""
    limits_name, msg = draw(valid_messages(target))
    wire: Wire = target.encode(LIMITS[limits_name], msg)
    head = wire[0].head if wire else b""
    noise = draw(_NOISE)
    return FuzzInput(target, limits_name, head + noise, draw(st.sampled_from(CHUNKS)))


def interesting_bytes() -> tuple[bytes, ...]:
    """Varints at the edges, in their shortest and 8-byte forms."""
    values = interesting_values(LIMITS["tight"])
    return tuple(varint_of_width(v, w) for v in values for w in (0, 8))


_NOISE = st.binary(max_size=96) | st.lists(st.sampled_from(interesting_bytes()), max_size=8).map(b"".join)


@functools.lru_cache(maxsize=256)
def fuzz_inputs(target: Target) -> st.SearchStrategy[FuzzInput]:
    return st.one_of(mutated_inputs(target), arbitrary_inputs(target))


__all__ = [
    "CHUNKS",
    "NO_NAMES",
    "FuzzInput",
    "Names",
    "arbitrary_inputs",
    "fuzz_inputs",
    "limits_names",
    "messages",
    "mutated_inputs",
    "names",
    "normalized_paths",
    "optional_groups",
    "priorities",
    "valid_messages",
    "varints",
]
