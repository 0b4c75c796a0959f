"""gomoqt's dialect of moq-lite (version ``0xfeedbabe``).

It is lite-02 with these differences, all handled here at the codec edge:

* Setup uses only the legacy framing (``0x00, varint length, body``; the
  server answers without a type byte) and offers ``0xfeedbabe``. Native QUIC
  uses ALPN ``moq-00`` (which kixelated peers read as IETF draft-14) and puts
  the path in setup parameter 0x1.
* Stream types are one raw byte (equal to the varint for values below 64).
* Priority in SUBSCRIBE and SUBSCRIBE_UPDATE is a varint (0..255), and
  SUBSCRIBE_UPDATE is allowed. ANNOUNCE's status is a varint.
* Broadcast paths start with ``/``; announce prefixes start and end with ``/``
  (the root is ``"/"``). Suffixes are relative, as ours are, and never empty:
  a prefix lists what lies under it, not the broadcast at the prefix itself.
* Errors are numbered per scope (session, announce, subscribe, group);
  :mod:`.gomoqt_codes` translates our :class:`~.errors.ErrorCode` (its names
  are re-exported here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from .codec import Codec
from .codes import GOMOQT_CODES, ErrorCodes
from .errors import ErrorCode, ProtocolError
from .gomoqt_codes import AnnounceCode, ErrorScope, GroupCode, SessionCode, SubscribeCode, from_gomoqt, to_gomoqt
from .lite_wire import Features
from .messages import Announce, AnnounceInit, ClientSetup, Parameters
from .paths import normalize_path
from .setup import PARAM_PATH, SetupFraming, path_parameter
from .wire import Reader, encode_varint

GOMOQT_VERSION = 0xFEEDBABE
ALPN_GOMOQT = "moq-00"
"""gomoqt's native-QUIC ALPN (kixelated peers use the same string for IETF draft-14)."""


class GomoqtCodec(Codec):
    version: ClassVar[int] = GOMOQT_VERSION
    name: ClassVar[str] = "gomoqt"
    features: ClassVar[Features] = replace(Codec.features, subscribe_update=True)
    error_codes: ClassVar[ErrorCodes] = GOMOQT_CODES
    setup_framing: ClassVar[SetupFraming] = SetupFraming.LEGACY
    """gomoqt sends and accepts only the legacy ``0x00`` SETUP framing."""

    # -- stream types: one raw byte
    def encode_stream_type(self, kind: int) -> bytes:
        if not 0 <= kind <= 255:
            raise ValueError(f"stream type {kind} does not fit in a byte")
        return bytes((kind,))

    # -- priority: a varint holding 0..255
    def _encode_priority(self, priority: int) -> bytes:
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0..255, got {priority}")
        return encode_varint(priority)

    def _decode_priority(self, reader: Reader) -> int:
        priority = reader.varint()
        if priority > 255:
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"priority {priority} does not fit in 0..255")
        return priority

    # -- paths: absolute on the wire, relative here
    def path_to_wire(self, path: str) -> str:
        return "/" + normalize_path(path)

    def path_from_wire(self, path: str) -> str:
        return normalize_path(path)

    def prefix_to_wire(self, prefix: str) -> str:
        relative = normalize_path(prefix)
        return f"/{relative}/" if relative else "/"

    def prefix_from_wire(self, prefix: str) -> str:
        return normalize_path(prefix)

    # -- a prefix is a directory: gomoqt lists only what lies strictly under it, never the
    #    broadcast at the prefix itself (an empty suffix would read as the path "/p/", not "/p")
    def encode_announce_init(self, msg: AnnounceInit) -> bytes:
        return super().encode_announce_init(AnnounceInit(tuple(suffix for suffix in msg.suffixes if suffix)))

    def encode_announce(self, msg: Announce) -> bytes:
        """ANNOUNCE for ``msg``, or ``b""`` (nothing to send) for an empty suffix."""
        return super().encode_announce(msg) if msg.suffix else b""

    # -- ANNOUNCE status is a varint (same bytes for 0 and 1)
    def decode_announce(self, body: bytes) -> Announce:
        reader = Reader(body)
        status = reader.varint()
        if status not in (0, 1):
            raise ProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"announce status {status} is neither 0 nor 1")
        suffix = reader.string(self.limits.max_path_length)
        reader.expect_end("ANNOUNCE")
        return Announce(status == 1, suffix)

    # -- setup helpers
    def client_setup(self, path: str | None = None) -> ClientSetup:
        """What a gomoqt client offers; ``path`` goes in parameter 0x1 (native QUIC only)."""
        params: Parameters = {} if path is None else {PARAM_PATH: path_parameter(path)}
        return ClientSetup((GOMOQT_VERSION,), params)


__all__ = [
    "ALPN_GOMOQT",
    "GOMOQT_VERSION",
    "AnnounceCode",
    "ErrorScope",
    "GomoqtCodec",
    "GroupCode",
    "SessionCode",
    "SubscribeCode",
    "from_gomoqt",
    "to_gomoqt",
]
