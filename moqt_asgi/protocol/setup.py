"""Session setup framings for moq-lite-01/02 (and gomoqt's dialect).

Two framings share the first bidirectional stream; its first varint tells
them apart:

* ``0x20`` "compat" (IETF draft-14 style): ``0x20, u16 len, body``; the server
  answers ``0x21, u16 len, body'``. Parameters are IETF-style: an even id
  carries a bare varint, an odd id ``varint len + bytes``.
* ``0x00`` legacy lite: ``0x00, varint len, body``; the server answers with no
  type byte, ``varint len, body'``. Parameters are ``varint count`` then
  ``id, len, bytes`` each.
"""

from __future__ import annotations

from enum import IntEnum

from .errors import ErrorCode, ProtocolError
from .limits import Limits
from .messages import ClientSetup, Parameters, ServerSetup
from .wire import Reader, encode_bytes, encode_string, encode_varint

PARAM_PATH = 0x01
"""Setup parameter carrying the session path (and query) on native QUIC."""
PARAM_MAX_REQUEST_ID = 0x02
PARAM_IMPLEMENTATION = 0x07


class SetupFraming(IntEnum):
    LEGACY = 0x00
    COMPAT = 0x20


COMPAT_SERVER_TYPE = 0x21


def _encode_parameters(framing: SetupFraming, params: Parameters) -> bytes:
    out = bytearray(encode_varint(len(params)))
    for key, value in params.items():
        out += encode_varint(key)
        if framing is SetupFraming.COMPAT and key % 2 == 0:
            if not isinstance(value, int):
                raise TypeError(f"parameter {key:#x} has an even id and must be an int")
            out += encode_varint(value)
        else:
            raw = encode_varint(value) if isinstance(value, int) else value
            out += encode_bytes(raw)
    return bytes(out)


def _decode_parameters(framing: SetupFraming, reader: Reader, limits: Limits) -> Parameters:
    count = reader.varint()
    if count > limits.max_parameters:
        raise ProtocolError(ErrorCode.TOO_MANY_PARAMETERS, f"{count} setup parameters (limit {limits.max_parameters})")
    params: Parameters = {}
    for _ in range(count):
        key = reader.varint()
        if framing is SetupFraming.COMPAT and key % 2 == 0:
            params[key] = reader.varint()
        else:
            params[key] = reader.bytes(limits.max_message_size)
    return params


def encode_client_setup(framing: SetupFraming, setup: ClientSetup) -> bytes:
    body = bytearray(encode_varint(len(setup.versions)))
    for version in setup.versions:
        body += encode_varint(version)
    body += _encode_parameters(framing, setup.parameters)
    if framing is SetupFraming.COMPAT:
        return bytes((framing,)) + len(body).to_bytes(2, "big") + body
    return bytes((framing,)) + encode_varint(len(body)) + body


def decode_client_setup(framing: SetupFraming, body: bytes, limits: Limits) -> ClientSetup:
    reader = Reader(body)
    count = reader.varint()
    if count == 0 or count > limits.max_versions:
        raise ProtocolError(ErrorCode.VERSION, f"client offered {count} versions")
    versions = tuple(reader.varint() for _ in range(count))
    params = _decode_parameters(framing, reader, limits)
    reader.expect_end("CLIENT_SETUP")
    return ClientSetup(versions, params)


def encode_server_setup(framing: SetupFraming, setup: ServerSetup) -> bytes:
    body = encode_varint(setup.version) + _encode_parameters(framing, setup.parameters)
    if framing is SetupFraming.COMPAT:
        return bytes((COMPAT_SERVER_TYPE,)) + len(body).to_bytes(2, "big") + body
    return encode_varint(len(body)) + body


def decode_server_setup(framing: SetupFraming, body: bytes, limits: Limits) -> ServerSetup:
    reader = Reader(body)
    version = reader.varint()
    params = _decode_parameters(framing, reader, limits)
    reader.expect_end("SERVER_SETUP")
    return ServerSetup(version, params)


def path_parameter(value: str) -> bytes:
    """The raw bytes of a Path parameter (odd id: length-prefixed on the wire)."""
    return value.encode("utf-8")


__all__ = [
    "COMPAT_SERVER_TYPE",
    "PARAM_IMPLEMENTATION",
    "PARAM_MAX_REQUEST_ID",
    "PARAM_PATH",
    "SetupFraming",
    "decode_client_setup",
    "decode_server_setup",
    "encode_client_setup",
    "encode_server_setup",
    "encode_string",
    "path_parameter",
]
