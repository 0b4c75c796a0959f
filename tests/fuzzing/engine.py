"""Fuzzing the session engine: a raw peer writes fuzzed streams into a real server session.

An :class:`Arena` is an app publishing ``demo/clock`` with a well-behaved
*guard* session of the same version attached for the whole test. For each
example a :class:`RawPeer` connects over the in-memory transport
(``serve_connection`` with the version's ALPN), completes the version's
session start, then writes the example's :class:`StreamPlan` s on new bidi
and uni streams (or, lite-01/02 and gomoqt, on its session stream).
:meth:`Arena.judge` then checks what the engine promises for hostile input:

* the server session either closed with a protocol-level code (never the
  "internal error" ``TRANSPORT``), or is still alive and answers a fresh
  announce request (whatever it refused was just that stream);
* nothing was logged at ERROR, no traceback, nothing "failed";
* once the peer leaves, ``serve_connection`` returns without raising and every
  task started during the example has finished (:func:`finished`);
* the guard session still receives frames (:meth:`Arena.check_guard`, after
  the task check: the guard's own accept loops start new tasks as it reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import strategies as st

from moqt_asgi import Broadcast, MoQ
from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.engine.handshake import start_client
from moqt_asgi.engine.session import Session
from moqt_asgi.engine.track import TrackReader
from moqt_asgi.protocol.errors import (
    APPLICATION_CODE_BASE,
    ErrorCode,
    MoQError,
    ProtocolError,
    SessionClosed,
    StreamError,
)
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.lite_wire import LiteBidi, LiteUni
from moqt_asgi.protocol.messages import AnnouncePlease
from moqt_asgi.protocol.versions import ALL_VERSIONS, Version, features_of
from moqt_asgi.protocol.wire import encode_varint
from moqt_asgi.serving import serve_connection
from moqt_asgi.transport.base import BidiStream, SendStream
from moqt_asgi.transport.memory import MemoryConnection, memory_pair

from ..helpers import memory_sessions, protocol_of
from .mutations import apply, mutation_ops
from .strategies import Names, messages
from .targets import TARGETS_BY_NAME, Target, targets_of
from .wire import Framed, Wire, raw

WAIT = 5.0
"""Upper bound on anything that should happen promptly; only a hang waits this long."""
SETTLE_ROUNDS = 64
"""Event-loop turns the server gets to react to a peer's bytes before it is judged."""

BROADCAST = "demo/clock"
NAMES = Names(paths=(BROADCAST, "demo", "elsewhere"), tracks=("seconds", "missing"))
"""What fuzzed requests ask for: the app's own broadcast and track half the time, so they get served."""

StreamKind = Literal["bidi", "uni", "session"]

OUTCOMES: Counter[str] = Counter()
"""How the judged examples of this process ended, per version (for a look after a long run)."""
KNOWN_ENGINE_BUGS: frozenset[str] = frozenset()
"""Engine bugs found by this fuzzing and not fixed yet. The property tests recognise each one by its exact
signature (:func:`known_bug`) and let it pass, so that they keep fuzzing everything else; the engine corpus
keeps each one as a strict xfail, so its fix shows up as an unexpected pass (then drop it from this set).

Found and fixed (their corpus cases now pass as ordinary regressions):

* ``session-info-decode``: on lite-01/02 and gomoqt a malformed message on the session stream (a SESSION_INFO
  with an empty body, ``00``, or one cut short) escaped ``Session._session_stream_loop`` unguarded: the session
  closed with TRANSPORT ("internal error") instead of DECODE, and "session failed" was logged.
* ``producer-track-ended``: a subscription served by a :class:`~moqt_asgi.Broadcast` track that ended just as
  the producer opened a group (the session closed, or the engine closed the track after a malformed
  SUBSCRIBE_UPDATE) logged "track handler ... failed" with a traceback.
"""


# -- what the raw peer writes ------------------------------------------------------------------

@dataclass(frozen=True)
class StreamPlan:
    """One stream the raw peer opens (or, ``session``, its lite-01/02 session stream) and what it writes."""

    kind: StreamKind
    data: bytes
    fin: bool
    label: str

    def __repr__(self) -> str:
        return f"StreamPlan({self.kind}, {self.label}, fin={self.fin}, {self.data.hex()!r})"


@dataclass(frozen=True)
class _Recipe:
    label: str
    kind: StreamKind
    stream_type: int | None
    families: tuple[str, ...]
    """Messages on the stream, in order; ``*`` after a name: zero to two more of it."""


_ALL_RECIPES = (
    _Recipe("announce", "bidi", LiteBidi.ANNOUNCE, ("announce_please",)),
    _Recipe("subscribe", "bidi", LiteBidi.SUBSCRIBE, ("subscribe", "subscribe_update*")),
    _Recipe("fetch", "bidi", LiteBidi.FETCH, ("fetch",)),
    _Recipe("probe", "bidi", LiteBidi.PROBE, ("probe", "probe*")),
    _Recipe("goaway", "bidi", LiteBidi.GOAWAY, ("goaway",)),
    _Recipe("track", "bidi", LiteBidi.TRACK, ("track_request",)),
    _Recipe("group", "uni", None, ("group_header", "frames")),
    _Recipe("setup", "uni", None, ("lite_setup",)),
    _Recipe("session_info", "session", None, ("session_info", "session_info*")),
    _Recipe("unknown-bidi", "bidi", 0x7, ("announce_please",)),
    _Recipe("unknown-uni", "uni", 0x2, ("group_header",)),
)


def _has_recipe(version: Version, recipe: _Recipe) -> bool:
    """Whether ``version`` has this kind of stream."""
    codec: Any = version.codec
    features = features_of(codec)
    if recipe.kind == "session":
        return features.session_stream
    if recipe.label == "setup":
        return features.setup_stream
    if recipe.label.startswith("unknown"):
        return False
    if recipe.stream_type is None:
        return True
    return int(recipe.stream_type) in {int(kind) for kind in getattr(codec, "bidi_stream_types",
                                                                        (LiteBidi.ANNOUNCE, LiteBidi.SUBSCRIBE))}


def _recipes(version: Version) -> st.SearchStrategy[_Recipe]:
    """The version's own streams, and one time in ``len(own) + 1`` a stream it does not have."""
    own = [recipe for recipe in _ALL_RECIPES if _has_recipe(version, recipe)]
    foreign = [recipe for recipe in _ALL_RECIPES if recipe not in own and recipe.kind != "session"]
    return st.sampled_from([*own, None]).flatmap(lambda r: st.just(r) if r is not None else st.sampled_from(foreign))


def _target(family: str, version: Version) -> Target:
    """``family`` in ``version``, or in the newest version that has it (a message this version lacks)."""
    own = TARGETS_BY_NAME.get(f"{family}@{version.name}")
    return own if own is not None else targets_of(family)[0]


@st.composite
def _recipe_wire(draw: st.DrawFn, version: Version, recipe: _Recipe) -> Wire:
    wire: list[Framed] = []
    if recipe.stream_type is not None:
        wire.append(raw(encode_varint(recipe.stream_type)))
    for family in recipe.families:
        repeat = draw(st.integers(0, 2)) if family.endswith("*") else 1
        if family == "subscribe_update*" and not features_of(version.codec).subscribe_update:
            repeat = 0
        target = _target(family.rstrip("*"), version)
        for _ in range(repeat):
            wire.extend(target.encode(DEFAULT_LIMITS, draw(messages(target, DEFAULT_LIMITS, NAMES))))
    return tuple(wire)


@st.composite
def structured_streams(draw: st.DrawFn, version: Version) -> StreamPlan:
    """A valid stream type, then messages: as they are, mutated, or cut short."""
    recipe = draw(_recipes(version))
    wire = draw(_recipe_wire(version, recipe))
    how = draw(st.sampled_from(("valid", "mutated", "mutated", "cut")))
    if how == "valid":
        data = b"".join(part.encode() for part in wire)
    elif how == "mutated":
        data = apply(wire, draw(mutation_ops(DEFAULT_LIMITS)))
    else:
        whole = b"".join(part.encode() for part in wire)
        data = whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    return StreamPlan(recipe.kind, data, draw(st.booleans()), f"{recipe.label}/{how}")


@st.composite
def random_streams(draw: st.DrawFn, version: Version) -> StreamPlan:
    """Any stream type (a known one half the time), then random bytes."""
    kind: StreamKind = draw(st.sampled_from(("bidi", "uni")))
    known = [int(k) for k in LiteBidi] if kind == "bidi" else [int(k) for k in LiteUni]
    stream_type = draw(st.sampled_from(known) | st.integers(0, 300))
    noise = draw(st.binary(max_size=48))
    return StreamPlan(kind, encode_varint(stream_type) + noise, draw(st.booleans()), f"{kind}-{stream_type:#x}/random")


def stream_plans(version: Version, structured: bool = True) -> st.SearchStrategy[list[StreamPlan]]:
    one = structured_streams(version) if structured else random_streams(version)
    return st.lists(one, min_size=1, max_size=3)


# -- log capture --------------------------------------------------------------------------------

class LogTrap(logging.Handler):
    """Collects records from the package's and asyncio's loggers; :meth:`bad` are the ones no peer may cause."""

    LOGGERS = ("moqt_asgi", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def bad(self, tolerated: frozenset[str] = frozenset()) -> list[str]:
        """Records no peer may cause, except those of the ``tolerated`` known bugs (:func:`known_bug`)."""
        out = []
        for record in self.records:
            if known_bug(record) in tolerated:
                continue
            message = record.getMessage()
            if record.levelno >= logging.ERROR or record.exc_info or "failed" in message or "Traceback" in message:
                out.append(f"{record.name} {record.levelname}: {message}" + (f" ({record.exc_info[1]!r})" if record.exc_info
                                                                              else ""))
        return out

    @contextlib.contextmanager
    def installed(self) -> Iterator[LogTrap]:
        loggers = [logging.getLogger(name) for name in self.LOGGERS]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


def known_bug(record: logging.LogRecord) -> str | None:
    """The :data:`KNOWN_ENGINE_BUGS` entry ``record`` is the signature of, if any."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    message = record.getMessage()
    error = record.exc_info[1]
    leaves = list(_leaves(error))
    if not leaves:
        return None
    if message == "session failed" and all(isinstance(leaf, ProtocolError) and _raised_in(leaf, "_session_stream_loop")
                                           for leaf in leaves):
        return "session-info-decode"
    if message.startswith("track handler for ") and message.endswith(" failed") and isinstance(error, BaseExceptionGroup) \
            and all(isinstance(leaf, SessionClosed) or (type(leaf) is MoQError and str(leaf).endswith(" is closed")
                                                        and _raised_in(leaf, "open_group")) for leaf in leaves):
        return "producer-track-ended"
    return None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _raised_in(error: BaseException, function: str) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


# -- the raw peer ------------------------------------------------------------------------------------

@dataclass
class RawPeer:
    """A raw client on ``version``: the version's session start done properly, then anything."""

    version: Version
    conn: MemoryConnection
    server_conn: MemoryConnection
    serving: asyncio.Task[None]
    sessions: list[Session]
    codec: Any = None
    session_stream: BidiStream | None = None
    streams: list[SendStream] = field(default_factory=list)
    readers: list[asyncio.Task[bytes]] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    """Every code the server reset or stopped one of our streams with (in our flat code space)."""

    @property
    def server(self) -> Session:
        assert self.sessions, "the server never accepted the session"
        return self.sessions[0]

    async def write(self, plan: StreamPlan) -> None:
        if plan.kind == "session":
            assert self.session_stream is not None
            stream: SendStream = self.session_stream
        elif plan.kind == "bidi":
            bidi = await self.conn.open_bi()
            self.readers.append(asyncio.ensure_future(_drain(bidi, self.codes)))
            stream = bidi
        else:
            stream = await self.conn.open_uni()
        self.streams.append(stream)
        stream.on_stopped(self.codes.append)
        with contextlib.suppress(MoQError):  # the server may already have stopped this stream or closed
            stream.write(plan.data, end=plan.fin)

    async def announced(self) -> list[str]:
        """Ask for every broadcast and read what is announced at once (proves the session still serves)."""
        return await ask_announced(self.conn, self.codec)

    async def leave(self) -> None:
        """Close the connection; the server's side must then finish on its own, without raising."""
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.conn.close(0)
        await _within(asyncio.shield(self.serving))
        self.serving.result()


async def ask_announced(conn: MemoryConnection, codec: Any) -> list[str]:
    """Open an announce request for everything on ``conn`` and return the suffixes announced at once."""
    features = features_of(codec)
    stream = await conn.open_bi()
    stream.write(bytes(codec.encode_stream_type(LiteBidi.ANNOUNCE)) if hasattr(codec, "encode_stream_type")
                 else encode_varint(LiteBidi.ANNOUNCE))
    stream.write(bytes(codec.encode_announce_please(AnnouncePlease(""))))
    reader = StreamReader(stream)
    limit = DEFAULT_LIMITS.max_message_size
    if features.announce_init:
        suffixes = list(codec.decode_announce_init(await _within(reader.read_message(limit))).suffixes)
    else:
        count = codec.decode_announce_ok(await _within(reader.read_message(limit))).active_count \
            if features.announce_ok else 1
        suffixes = []
        for _ in range(count):
            if features.announce_ids:
                kind = await _within(reader.read_varint())
                suffixes.append(codec.decode_announcement(kind, await _within(reader.read_message(limit))).suffix)
            else:
                suffixes.append(codec.decode_announce(await _within(reader.read_message(limit))).suffix)
    stream.write(b"", end=True)
    return suffixes


async def _drain(stream: BidiStream, codes: list[int]) -> bytes:
    """Read what the server answers on a stream until FIN; a reset's code goes to ``codes``."""
    data = b""
    try:
        while chunk := await stream.read():
            data += chunk
    except StreamError as exc:
        codes.append(exc.code)
    except MoQError:
        pass
    return data


async def _within(aw: Any, timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(aw, timeout)


async def settle(rounds: int = SETTLE_ROUNDS) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- the arena ---------------------------------------------------------------------------------------------

class Arena:
    """An app under attack on one version, and a well-behaved guard session that must not notice."""

    def __init__(self, version: Version) -> None:
        self.version = version
        self.app = MoQ()
        self.broadcast = Broadcast(BROADCAST)
        self.seconds = self.broadcast.create_track("seconds")
        self.seconds.write_frame(b"tick")  # lite-05+ answers a SUBSCRIBE once a group exists
        self.guard_track = self.broadcast.create_track("guard")
        self.guard_track.write_frame(b"guard-0")
        self.app.mux.publish(BROADCAST, self.broadcast)
        self.guard: TrackReader | None = None
        self.guard_session: Session | None = None
        self._frames = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Arena]:
        async with memory_sessions(self.app, version=self.version) as (client, _, _, _):
            self.guard_session = client
            self.guard = await _within(client.subscribe(BROADCAST, "guard"))
            assert await self._next_guard_frame() == b"guard-0"
            yield self
            await self.check_guard()
            self.guard.close()

    async def _next_guard_frame(self) -> bytes:
        assert self.guard is not None
        group = await _within(self.guard.next_group())
        assert group is not None, "the guard's subscription ended"
        frames = await _within(group.read_all())
        return bytes(frames[0])

    async def check_guard(self) -> None:
        """The guard session is open and a new frame reaches it."""
        assert self.guard_session is not None and not self.guard_session.closed, "the guard session closed"
        self._frames += 1
        payload = f"guard-{self._frames}".encode()
        self.guard_track.write_frame(payload)
        assert await self._next_guard_frame() == payload

    @contextlib.asynccontextmanager
    async def peer(self, *, setup: bool = True) -> AsyncIterator[RawPeer]:
        """A raw peer (session started unless ``setup`` is false); it leaves when the block ends."""
        conn, server_conn = memory_pair()
        sessions: list[Session] = []
        protocol = protocol_of(self.version)
        serving = asyncio.ensure_future(serve_connection(self.app, server_conn, transport="memory", protocol=protocol,
                                                         on_session=sessions.append))
        peer = RawPeer(self.version, conn, server_conn, serving, sessions)
        try:
            if setup:
                start = await _within(start_client(conn, DEFAULT_LIMITS, protocol=protocol, path="/",
                                                   versions=(self.version,)))
                peer.codec = start.codec
                conn.error_codes = start.codec.error_codes  # read the server's reset and stop codes in our code space
                peer.session_stream = start.session_stream[0] if start.session_stream else None
                for _ in range(1000):
                    if sessions:
                        break
                    await asyncio.sleep(0)
            yield peer
        finally:
            if not serving.done():
                with contextlib.suppress(Exception):
                    await peer.leave()
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving

    async def judge(self, peer: RawPeer, trap: LogTrap, tolerated: frozenset[str] = KNOWN_ENGINE_BUGS) -> str:
        """Check the server's reaction to whatever ``peer`` sent; returns a short description of it.

        ``tolerated``: known bugs whose exact signature passes (the corpus replays them with none).
        """
        await settle()
        server = peer.server
        for code in peer.codes:  # a refused stream carries a code we know (or an application code)
            assert code >= APPLICATION_CODE_BASE or code in {int(c) for c in ErrorCode}, f"stream refused with {code}"
        seen = {known_bug(record) for record in trap.records} & tolerated
        if seen:
            outcome = "known bug " + ", ".join(sorted(b for b in seen if b))
        elif server.closed:
            reason = server.close_reason
            assert reason is not None
            assert reason.code != ErrorCode.TRANSPORT, f"the session failed internally: {reason}"
            assert reason.code in {int(code) for code in ErrorCode}, f"closed with unknown code {reason.code}"
            outcome = f"closed {ErrorCode(reason.code).name.lower()}"
        else:
            assert BROADCAST in await peer.announced(), "the session no longer answers an announce request"
            outcome = "alive"
        OUTCOMES[f"{self.version.name}: {outcome}"] += 1
        OUTCOMES.update(f"{self.version.name}: stream refused {ErrorCode(code).name.lower()}" for code in peer.codes
                        if code in ErrorCode._value2member_map_)
        await peer.leave()
        assert not trap.bad(tolerated), trap.bad(tolerated)
        return outcome


async def finished(before: set[asyncio.Task[Any]], rounds: int = 200) -> None:
    """Every task started since ``before`` was taken has ended."""
    for _ in range(rounds):
        left = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
        if not left:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"tasks left running: {left}")


VERSIONS = ALL_VERSIONS

__all__ = [
    "KNOWN_ENGINE_BUGS",
    "NAMES",
    "VERSIONS",
    "Arena",
    "LogTrap",
    "RawPeer",
    "StreamPlan",
    "ask_announced",
    "finished",
    "known_bug",
    "random_streams",
    "settle",
    "stream_plans",
    "structured_streams",
]
