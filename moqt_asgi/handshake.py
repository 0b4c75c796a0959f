"""Session setup on the first bidirectional stream (moq-lite-01/02 and gomoqt).

The client opens the stream and offers versions; the server reads the offer
(:func:`read_client_setup`), lets the application decide, then answers with
:func:`send_server_setup` or rejects with :func:`reject_setup`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .protocol.errors import ErrorCode, ProtocolError, SetupRejected, StreamError
from .protocol.limits import Limits
from .protocol.lite import Codec
from .protocol.messages import ClientSetup, Parameters, ServerSetup
from .protocol.setup import (
    PARAM_IMPLEMENTATION,
    PARAM_PATH,
    SetupFraming,
    decode_client_setup,
    decode_server_setup,
    encode_client_setup,
    encode_server_setup,
)
from .protocol.versions import SETUP_VERSIONS, Version, choose_version, version_by_number
from .reader import StreamReader
from .transport.base import BidiStream, Connection

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
    version = version_by_number(server.version)
    if version is None or version not in versions:
        raise ProtocolError(ErrorCode.VERSION, f"server chose version {server.version:#x}, which we did not offer")
    return version.new_codec(limits), stream, reader


__all__ = ["SetupOffer", "choose_version", "client_setup", "read_client_setup", "reject_setup", "send_server_setup"]
