"""Session setup on the first bidirectional stream (moq-lite-01/02 and gomoqt).

The client opens the stream and offers versions; the server reads the offer
(:func:`read_client_setup`), lets the application decide, then answers with
:func:`send_server_setup` or rejects with :func:`reject_setup`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..protocol.codec import Codec
from ..protocol.codes import GOMOQT_SETUP_CODES, SCOPED_CODES
from ..protocol.errors import ErrorCode, ProtocolError, SetupRejected, StreamError
from ..protocol.limits import Limits
from ..protocol.lite_wire import LiteUni
from ..protocol.messages import ClientSetup, LiteSetup, Parameters, ServerSetup
from ..protocol.setup import (
    PARAM_IMPLEMENTATION,
    PARAM_PATH,
    SetupFraming,
    decode_client_setup,
    decode_server_setup,
    encode_client_setup,
    encode_server_setup,
)
from ..protocol.versions import (
    ALPN_GOMOQT,
    DEFAULT_VERSIONS,
    GOMOQT_DIALECT,
    SETUP_VERSIONS,
    Version,
    choose_version,
    lookup_version,
    version_by_alpn,
)
from ..transport.base import BidiStream, Connection
from ._reader import StreamReader

IMPLEMENTATION = b"moqt-asgi"


@dataclass(slots=True)
class SetupOffer:
    """A client's setup as the server received it."""

    stream: BidiStream
    reader: StreamReader
    framing: SetupFraming
    setup: ClientSetup

    @property
    def path(self) -> str | None:
        raw = self.setup.parameters.get(PARAM_PATH)
        if isinstance(raw, bytes):
            return raw.decode("utf-8", "replace")
        return None


async def _read_setup_body(reader: StreamReader, framing: SetupFraming, limit: int) -> bytes:
    if framing is SetupFraming.COMPAT:
        size = int.from_bytes(await reader.read_exact(2), "big")
    else:
        size = await reader.read_varint()
    if size > limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"setup message of {size} bytes exceeds the limit of {limit}")
    return await reader.read_exact(size)


async def read_client_setup(connection: Connection, limits: Limits) -> SetupOffer:
    """Accept the first bidi stream and decode the client's setup (no timeout here)."""
    stream = await connection.accept_bi()
    reader = StreamReader(stream)
    kind = await reader.read_varint()
    try:
        framing = SetupFraming(kind)
    except ValueError:
        raise ProtocolError(ErrorCode.UNEXPECTED_STREAM, f"first stream has type {kind:#x}, not a session setup") from None
    if framing is SetupFraming.COMPAT and connection.error_codes is GOMOQT_SETUP_CODES:
        # moq-00 is IETF draft-14 to everyone but the old gomoqt: a 0x20 CLIENT_SETUP there is answered in
        # IETF's numbering (moq-rs's scoped registry), also when its body does not parse.
        connection.error_codes = SCOPED_CODES
    body = await _read_setup_body(reader, framing, limits.max_message_size)
    return SetupOffer(stream, reader, framing, decode_client_setup(framing, body, limits))


def send_server_setup(offer: SetupOffer, version: Version, limits: Limits, parameters: Parameters | None = None) -> Codec:
    offer.stream.write(encode_server_setup(offer.framing, ServerSetup(version.number, parameters or {})))
    return version.new_codec(limits)


def reject_setup(offer: SetupOffer, code: int) -> None:
    offer.stream.reset(code)
    offer.stream.stop(code)


async def client_setup(connection: Connection, limits: Limits, *, path: str | None,
                       versions: tuple[Version, ...] = SETUP_VERSIONS,
                       framing: SetupFraming = SetupFraming.COMPAT,
                       timeout: float = 10.0) -> tuple[Codec, BidiStream, StreamReader]:
    """Open the session stream, offer ``versions``, and return the chosen codec."""
    stream = await connection.open_bi()
    params: Parameters = {}
    if framing is SetupFraming.COMPAT:
        params[PARAM_IMPLEMENTATION] = IMPLEMENTATION
    if path is not None:
        params[PARAM_PATH] = path.encode("utf-8")
    stream.write(encode_client_setup(framing, ClientSetup(tuple(v.number for v in versions), params)))
    reader = StreamReader(stream)
    try:
        async with asyncio.timeout(timeout):
            if framing is SetupFraming.COMPAT:
                kind = await reader.read_varint()
                if kind != 0x21:
                    raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"expected SERVER_SETUP (0x21), got {kind:#x}")
            body = await _read_setup_body(reader, framing, limits.max_message_size)
    except StreamError as exc:
        raise SetupRejected(exc.code, "the server refused the session") from None
    server = decode_server_setup(framing, body, limits)
    version = lookup_version(server.version)
    if version is None or version not in versions:
        raise ProtocolError(ErrorCode.VERSION, f"server chose version {server.version:#x}, which we did not offer")
    return version.new_codec(limits), stream, reader


# -- lite-05+: each side writes one SETUP on its own uni stream
async def read_lite_setup(connection: Connection, codec: Codec, limits: Limits) -> LiteSetup:
    """The peer's SETUP: its first uni stream must be the SETUP stream (no timeout here)."""
    stream = await connection.accept_uni()
    reader = StreamReader(stream)
    kind = await reader.read_varint()
    if kind != LiteUni.SETUP:
        raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"the first uni stream has type {kind:#x}, not SETUP")
    setup: LiteSetup = codec.decode_setup(await reader.read_message(limits.max_message_size))
    return setup


async def send_lite_setup(connection: Connection, codec: Codec, setup: LiteSetup) -> None:
    stream = await connection.open_uni()
    stream.write(codec.encode_setup_stream(setup), end=True)


SessionStream = tuple[BidiStream, StreamReader]
"""lite-01/02 and gomoqt: the setup stream, kept open for SESSION_INFO (see :class:`~.session.Session`)."""


@dataclass(slots=True)
class ClientStart:
    """What a client's handshake produced: the codec and, for lite-01/02, the open session stream."""

    codec: Codec
    session_stream: SessionStream | None = None
    peer_setup: LiteSetup | None = None


async def start_client(connection: Connection, limits: Limits, *, protocol: str | None, path: str | None,
                       versions: tuple[Version, ...] = DEFAULT_VERSIONS, timeout: float = 10.0) -> ClientStart:
    """Run the client's side of session start for the negotiated ``protocol``.

    ``protocol`` is the ALPN (native QUIC) or the server's ``wt-protocol``
    (WebTransport; ``None`` if it sent none). ``path`` goes in the SETUP where
    the version carries one (native QUIC); pass ``None`` over WebTransport.
    """
    fixed = version_by_alpn(protocol)
    if fixed is not None:
        if fixed not in versions:
            raise ProtocolError(ErrorCode.VERSION, f"server chose {fixed.name}, which we did not offer")
        codec = fixed.new_codec(limits)
        connection.error_codes = fixed.codec.error_codes  # a refused SETUP is read in the version's codes
        if not fixed.uni_setup:
            return ClientStart(codec)
        await send_lite_setup(connection, codec, LiteSetup(path=path))
        try:
            async with asyncio.timeout(timeout):
                peer = await read_lite_setup(connection, codec, limits)
        except StreamError as exc:
            raise SetupRejected(exc.code, "the server refused the session") from None
        return ClientStart(codec, peer_setup=peer)
    if protocol == ALPN_GOMOQT or (GOMOQT_DIALECT in versions and not any(v in SETUP_VERSIONS for v in versions)):
        if GOMOQT_DIALECT not in versions:
            raise ProtocolError(ErrorCode.VERSION, "server chose gomoqt's moq-00, which we did not offer")
        connection.error_codes = GOMOQT_SETUP_CODES  # gomoqt refuses with session codes on the session stream
        codec, stream, reader = await client_setup(connection, limits, path=path, versions=(GOMOQT_DIALECT,),
                                                   framing=SetupFraming.LEGACY, timeout=timeout)
        return ClientStart(codec, (stream, reader))
    offered = tuple(v for v in versions if v in SETUP_VERSIONS)
    if not offered:
        raise ProtocolError(ErrorCode.VERSION, f"server chose {protocol or 'SETUP negotiation'}, which we did not offer")
    connection.error_codes = offered[0].codec.error_codes  # a refused SETUP is numbered like the session would be
    codec, stream, reader = await client_setup(connection, limits, path=path, versions=offered, timeout=timeout)
    return ClientStart(codec, (stream, reader))


__all__ = [
    "ClientStart",
    "SessionStream",
    "SetupOffer",
    "choose_version",
    "client_setup",
    "read_client_setup",
    "read_lite_setup",
    "reject_setup",
    "send_lite_setup",
    "send_server_setup",
    "start_client",
]
