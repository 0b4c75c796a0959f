"""Fuzzing our client session: a raw server answers its requests with fuzzed bytes.

The other direction of :mod:`.engine`. Our client :class:`Session` (with a
broadcast of its own, ``client/cam``) starts a session with a raw server over
the in-memory transport, then makes one request: SUBSCRIBE, an announce
request, FETCH (lite-03+) or TRACK (lite-05+). The raw server reads it and
answers on that stream with the version's responses (SUBSCRIBE_OK / START /
DROP, ANNOUNCE_INIT / ANNOUNCE_OK / announcements, frames, TRACK_INFO), as
they are, mutated or cut short, and for a subscription opens group streams
too (header and frames, fuzzed the same way). It may also open unsolicited
streams of its own.

Then (:func:`judge_client`): the request returned or raised one of our
``MoQError`` s (nothing else); the client session closed with a protocol-level
code or still answers the raw server's announce request; nothing was logged as
a failure; no task was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from moqt_asgi import Broadcast
from moqt_asgi.engine._reader import StreamReader
from moqt_asgi.engine.handshake import (
    read_client_setup,
    read_lite_setup,
    send_lite_setup,
    send_server_setup,
    start_client,
)
from moqt_asgi.engine.mux import TrackMux
from moqt_asgi.engine.session import Session
from moqt_asgi.protocol.errors import ErrorCode, MoQError
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.messages import GroupHeader, LiteSetup
from moqt_asgi.protocol.versions import Version, features_of
from moqt_asgi.transport.base import BidiStream
from moqt_asgi.transport.memory import MemoryConnection, memory_pair

from ..helpers import protocol_of
from .engine import BROADCAST, NAMES, OUTCOMES, LogTrap, StreamPlan, _within, ask_announced, known_bug, settle
from .mutations import apply, mutation_ops
from .strategies import messages
from .targets import TARGETS_BY_NAME, Target
from .wire import Framed, Wire

CLIENT_BROADCAST = "client/cam"
REQUESTS = ("subscribe", "announced", "fetch", "track_info")


def requests_of(version: Version) -> tuple[str, ...]:
    features = features_of(version.codec)
    return tuple(r for r in REQUESTS if (r != "fetch" or features.fetch) and (r != "track_info" or features.track_stream))


def _target(family: str, version: Version) -> Target:
    return TARGETS_BY_NAME[f"{family}@{version.name}"]


def _damage(data: st.DataObject, wire: Wire, what: str) -> tuple[bytes, bool]:
    """``wire`` as it is, mutated or cut short; and whether to FIN after it."""
    how = data.draw(st.sampled_from(("valid", "mutated", "mutated", "cut")), label=f"{what}: how")
    whole = b"".join(part.encode() for part in wire)
    if how == "mutated":
        whole = apply(wire, data.draw(mutation_ops(DEFAULT_LIMITS), label=f"{what}: mutations"))
    elif how == "cut":
        whole = whole[: data.draw(st.integers(0, max(0, len(whole) - 1)), label=f"{what}: cut at")]
    return whole, data.draw(st.booleans(), label=f"{what}: fin")


def _messages(data: st.DataObject, version: Version, family: str, count: int) -> Wire:
    target = _target(family, version)
    wire: list[Framed] = []
    for _ in range(count):
        wire.extend(target.encode(DEFAULT_LIMITS, data.draw(messages(target, DEFAULT_LIMITS, NAMES), label=family)))
    return tuple(wire)


def response_wire(data: st.DataObject, version: Version, request: str) -> Wire:
    """What a publisher answers ``request`` with on its stream, in ``version``."""
    features = features_of(version.codec)
    more = data.draw(st.integers(0, 2), label="more messages")
    if request == "subscribe":
        family = "subscribe_response" if features.typed_subscribe_responses else "subscribe_ok"
        return _messages(data, version, family, 1 + more)
    if request == "fetch":
        return _messages(data, version, "frames", 1)
    if request == "track_info":
        return _messages(data, version, "track_info", 1)
    first: Wire = ()
    if features.announce_init:
        first = _messages(data, version, "announce_init", 1)
    elif features.announce_ok:
        first = _messages(data, version, "announce_ok", 1)
    return first + _messages(data, version, "announcement" if features.announce_ids else "announce", more)


def group_wire(data: st.DataObject, version: Version, subscribe_id: int) -> Wire:
    """A group stream for our subscription (or, a third of the time, for some other id)."""
    header_target = _target("group_header", version)
    header: GroupHeader = data.draw(messages(header_target, DEFAULT_LIMITS), label="group header")
    if data.draw(st.integers(0, 2), label="own id") != 0:
        header = GroupHeader(subscribe_id, header.sequence, header.frame_start)
    return header_target.encode(DEFAULT_LIMITS, header) + _messages(data, version, "frames", 1)


# -- the raw server ---------------------------------------------------------------------------------------

@dataclass
class RawServer:
    """The server end of a session with our client, driven by hand."""

    version: Version
    conn: MemoryConnection
    client_conn: MemoryConnection
    client: Session
    codec: Any
    session_stream: BidiStream | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def accept_request(self) -> tuple[BidiStream, StreamReader, int]:
        """The client's request stream, its reader and the stream type (its message is left to read)."""
        stream = await _within(self.conn.accept_bi())
        reader = StreamReader(stream)
        return stream, reader, await _within(reader.read_varint())


@contextlib.asynccontextmanager
async def raw_server(version: Version) -> AsyncIterator[RawServer]:
    """Our client session (publishing ``client/cam``) connected to a raw server; closed at the end."""
    client_conn, conn = memory_pair()
    limits = DEFAULT_LIMITS
    starting = asyncio.ensure_future(start_client(client_conn, limits, protocol=protocol_of(version), path="/",
                                                  versions=(version,)))
    codec: Any = version.new_codec(limits)
    session_stream = None
    try:
        if version.bidi_setup:
            offer = await _within(read_client_setup(conn, limits))
            codec = send_server_setup(offer, version, limits)
            session_stream = offer.stream
        elif version.uni_setup:
            await _within(read_lite_setup(conn, codec, limits))
            await send_lite_setup(conn, codec, LiteSetup())
        start = await _within(starting)
    finally:
        if not starting.done():
            starting.cancel()
    conn.error_codes = codec.error_codes
    mux = TrackMux()
    broadcast = Broadcast(CLIENT_BROADCAST)
    broadcast.create_track("video").write_frame(b"frame")
    mux.publish(CLIENT_BROADCAST, broadcast)
    client = Session(client_conn, start.codec, mux=mux, limits=limits, is_client=True, path="/",
                     session_stream=start.session_stream)
    client.start()
    await client.wait_started()
    server = RawServer(version, conn, client_conn, client, codec, session_stream)
    try:
        yield server
    finally:
        for task in server.tasks:
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await client.aclose()
        conn.close(0)


async def consume(server: RawServer, request: str) -> Any:
    """Make ``request`` as an application would, and read what it yields until cancelled."""
    client = server.client
    if request == "subscribe":
        track = await client.subscribe(BROADCAST, "seconds")
        try:
            while (group := await track.next_group()) is not None:
                await group.read_all()
        finally:
            track.close()
        return track
    if request == "announced":
        announcements = await client.announced("")
        try:
            while await announcements.next() is not None:
                pass
        finally:
            announcements.close()
        return announcements
    if request == "fetch":
        return await client.fetch(BROADCAST, "seconds", 0)
    return await client.track_info(BROADCAST, "seconds")


async def answer(server: RawServer, data: st.DataObject, request: str) -> None:
    """Read the client's request and answer it with fuzzed bytes (and group streams for a subscription)."""
    stream, reader, _ = await server.accept_request()
    body = await _within(reader.read_message(DEFAULT_LIMITS.max_message_size))
    payload, fin = _damage(data, response_wire(data, server.version, request), "response")
    with contextlib.suppress(MoQError):
        stream.write(payload, end=fin)
    if request != "subscribe":
        return
    subscribe_id = server.codec.decode_subscribe(body).subscribe_id
    for index in range(data.draw(st.integers(0, 2), label="groups")):
        group = await server.conn.open_uni()
        group_payload, group_fin = _damage(data, group_wire(data, server.version, subscribe_id), f"group {index}")
        with contextlib.suppress(MoQError):
            group.write(group_payload, end=group_fin)


async def unsolicited(server: RawServer, plans: list[StreamPlan]) -> None:
    """Streams the raw server opens on its own (requests to our client's publisher half, or nonsense)."""
    for plan in plans:
        if plan.kind == "session" and server.session_stream is not None:
            stream: Any = server.session_stream
        elif plan.kind == "uni":
            stream = await server.conn.open_uni()
        else:
            stream = await server.conn.open_bi()
            server.tasks.append(asyncio.ensure_future(_discard(stream)))
        with contextlib.suppress(MoQError):
            stream.write(plan.data, end=plan.fin)


async def _discard(stream: BidiStream) -> None:
    with contextlib.suppress(MoQError):
        while await stream.read():
            pass


async def judge_client(server: RawServer, request: asyncio.Task[Any], trap: LogTrap,
                       tolerated: frozenset[str]) -> str:
    """Check how our client took it; returns a short description."""
    await settle()
    request.cancel()
    results = await asyncio.gather(request, return_exceptions=True)
    result = results[0]
    client = server.client
    seen = {known_bug(record) for record in trap.records} & tolerated
    if not seen and isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
        # refused, cut off or malformed: the caller must hear it as one of our errors
        assert isinstance(result, MoQError), f"the request raised {result!r}"
    if seen:
        outcome = "known bug " + ", ".join(sorted(b for b in seen if b))
    elif client.closed:
        reason = client.close_reason
        assert reason is not None
        if not reason.remote:
            assert reason.code != ErrorCode.TRANSPORT, f"the client failed internally: {reason}"
            assert reason.code in {int(code) for code in ErrorCode}, f"closed with unknown code {reason.code}"
        outcome = f"closed {ErrorCode(reason.code).name.lower()}" if reason.code in ErrorCode._value2member_map_ \
            else f"closed {reason.code}"
    else:
        assert CLIENT_BROADCAST in await ask_announced(server.conn, server.codec), "the client no longer answers"
        outcome = "alive"
    OUTCOMES[f"client {server.version.name}: {outcome}"] += 1
    assert not trap.bad(tolerated), trap.bad(tolerated)
    return outcome


__all__ = [
    "CLIENT_BROADCAST",
    "REQUESTS",
    "RawServer",
    "answer",
    "consume",
    "judge_client",
    "raw_server",
    "requests_of",
    "response_wire",
    "unsolicited",
]
