"""How each wire dialect numbers error codes, applied at the transport edge.

The engine speaks one flat code space (:class:`~.errors.ErrorCode`) for
stream resets, stop-sendings and session closes. A transport
(:class:`~moqt_asgi.transport.base.Connection`) translates with its
``error_codes`` map, an :class:`ErrorCodes`, only when it resets, stops or
closes, never on the per-frame path:

* :data:`FLAT_CODES`: moq-lite's flat codes as they are; a connection's map
  until its dialect is known (no dialect speaks it any more).
* :data:`SCOPED_CODES`: every lite version (01..06), moq-rs 0.5.1's separate
  session and stream registries (:mod:`.scoped_codes`), which it uses on
  lite-01/02 too. On native QUIC moq-rs carries the
  stream codes in WebTransport's HTTP/3 mapping (:func:`app_to_http`) even
  though no WebTransport is involved (``wt_mapped_on_quic``); session close
  codes go unmapped.
* :data:`GOMOQT_CODES`: gomoqt's per-scope tables (:mod:`.gomoqt_codes`), and
  :data:`GOMOQT_SETUP_CODES` for its session setup.

Application codes (``64 + n``) pass through every map. The HTTP/3 mapping
functions live here, with no dependency on the WebTransport package, so
that the native QUIC transport can use them; ``moqt_asgi.webtransport.capsules``
re-exports them.
"""

from __future__ import annotations

from typing import ClassVar

from .errors import GOAWAY_TIMEOUT, ErrorCode
from .gomoqt_codes import ErrorScope, from_gomoqt, to_gomoqt
from .gomoqt_codes import SessionCode as GomoqtSessionCode
from .scoped_codes import SessionCode as ScopedSessionCode
from .scoped_codes import from_session_code, from_stream_code, to_session_code, to_stream_code

WT_CODE_FIRST = 0x52E4A40FA8DB
"""The HTTP/3 code carrying WebTransport application code 0."""
WT_CODE_LAST = 0x52E5AC983162
"""The HTTP/3 code carrying WebTransport application code ``2**32 - 1``."""
MAX_APP_CODE = 0xFFFFFFFF
"""WebTransport application error codes are 32-bit."""

def app_to_http(code: int) -> int:
    """The HTTP/3 error code carrying WebTransport application code ``code`` (0..2**32-1)."""
    if not 0 <= code <= MAX_APP_CODE:
        raise ValueError(f"WebTransport application error codes are 32-bit, got {code}")
    return WT_CODE_FIRST + code + code // 0x1E


def http_to_app(code: int) -> int | None:
    """The application code inside HTTP/3 code ``code``, or ``None`` if it carries none."""
    if not WT_CODE_FIRST <= code <= WT_CODE_LAST or (code - 0x21) % 0x1F == 0:
        return None
    shifted = code - WT_CODE_FIRST
    return shifted - shifted // 0x1F


def clamp_app_code(code: int) -> int:
    """``code`` forced into WebTransport's 32-bit application code range."""
    return min(max(int(code), 0), MAX_APP_CODE)


class ErrorCodes:
    """The identity map: moq-lite's flat codes on the wire (a connection's default).

    ``*_out`` turn one of our :class:`~.errors.ErrorCode` values (or an
    application code) into the wire code; ``*_in`` turn a wire code back.
    ``bidi`` tells which kind of stream a stream code is for.
    """

    __slots__ = ()

    name: ClassVar[str] = "flat"
    wt_mapped_on_quic: ClassVar[bool] = False
    """True if stream codes travel in WebTransport's HTTP/3 mapping on native QUIC too."""
    goaway_timeout: ClassVar[int] = int(ErrorCode.TIMEOUT)
    """The code to close a session with when the peer did not leave after a GOAWAY.

    The flat codes have no such code, so ``TIMEOUT``; the other dialects
    use :data:`~.errors.GOAWAY_TIMEOUT`, which their ``session_out`` maps to ``0x10``.
    """

    def __repr__(self) -> str:
        return f"<ErrorCodes {self.name}>"

    def session_out(self, code: int) -> int:
        """The wire close code for one of ours."""
        return int(code)

    def session_in(self, code: int) -> int:
        """Our code for a wire close code."""
        return int(code)

    def stream_out(self, code: int, *, bidi: bool) -> int:
        """The wire reset / stop-sending code for one of ours."""
        return int(code)

    def stream_in(self, code: int, *, bidi: bool) -> int:
        """Our code for a wire reset / stop-sending code."""
        return int(code)


class ScopedErrorCodes(ErrorCodes):
    """moq-rs 0.5.1's session and stream registries (every lite version).

    Stream codes are the unmapped registry values here; on native QUIC the
    transport also applies :func:`app_to_http` (``wt_mapped_on_quic``), and
    over WebTransport the session layer does so anyway. Codes that neither
    registry defines read as ``TRANSPORT``.
    """

    __slots__ = ()

    name: ClassVar[str] = "scoped"
    wt_mapped_on_quic: ClassVar[bool] = True
    goaway_timeout: ClassVar[int] = GOAWAY_TIMEOUT

    def session_out(self, code: int) -> int:
        return int(ScopedSessionCode.GOAWAY_TIMEOUT) if code == GOAWAY_TIMEOUT else to_session_code(code)

    def session_in(self, code: int) -> int:
        return from_session_code(code)

    def stream_out(self, code: int, *, bidi: bool) -> int:
        return to_stream_code(code)

    def stream_in(self, code: int, *, bidi: bool) -> int:
        return from_stream_code(code)


class GomoqtErrorCodes(ErrorCodes):
    """gomoqt's per-scope tables.

    Close codes use the session scope. A stream code uses the subscribe
    scope on bidi streams and the group scope on uni streams: gomoqt's
    announce streams are bidi too, so their resets are numbered as
    subscribe errors (an approximation; the transport cannot tell the two
    kinds of bidi stream apart). Codes gomoqt does not define read as
    ``TRANSPORT``.
    """

    __slots__ = ()

    name: ClassVar[str] = "gomoqt"
    goaway_timeout: ClassVar[int] = GOAWAY_TIMEOUT

    def session_out(self, code: int) -> int:
        if code == GOAWAY_TIMEOUT:
            return int(GomoqtSessionCode.GOAWAY_TIMEOUT)
        return to_gomoqt(code, ErrorScope.SESSION)

    def session_in(self, code: int) -> int:
        return from_gomoqt(code, ErrorScope.SESSION)

    def stream_out(self, code: int, *, bidi: bool) -> int:
        return to_gomoqt(code, ErrorScope.SUBSCRIBE if bidi else ErrorScope.GROUP)

    def stream_in(self, code: int, *, bidi: bool) -> int:
        return from_gomoqt(code, ErrorScope.SUBSCRIBE if bidi else ErrorScope.GROUP)


class GomoqtSetupErrorCodes(GomoqtErrorCodes):
    """gomoqt's tables while a session is being set up.

    gomoqt refuses a session by resetting the session stream (the only bidi
    stream at that point) with a *session* code, so bidi stream codes use the
    session scope here. The session switches to :data:`GOMOQT_CODES` once it
    starts.
    """

    __slots__ = ()

    name: ClassVar[str] = "gomoqt-setup"

    def stream_out(self, code: int, *, bidi: bool) -> int:
        return to_gomoqt(code, ErrorScope.SESSION if bidi else ErrorScope.GROUP)

    def stream_in(self, code: int, *, bidi: bool) -> int:
        return from_gomoqt(code, ErrorScope.SESSION if bidi else ErrorScope.GROUP)


FLAT_CODES = ErrorCodes()
SCOPED_CODES = ScopedErrorCodes()
GOMOQT_CODES = GomoqtErrorCodes()
GOMOQT_SETUP_CODES = GomoqtSetupErrorCodes()


def goaway_timeout_code(codes: ErrorCodes) -> int:
    """The close code for "did not leave after GOAWAY" in dialect ``codes`` (its ``goaway_timeout``)."""
    return codes.goaway_timeout


__all__ = [
    "FLAT_CODES",
    "GOMOQT_CODES",
    "GOMOQT_SETUP_CODES",
    "GOAWAY_TIMEOUT",
    "MAX_APP_CODE",
    "SCOPED_CODES",
    "WT_CODE_FIRST",
    "WT_CODE_LAST",
    "ErrorCodes",
    "GomoqtErrorCodes",
    "GomoqtSetupErrorCodes",
    "ScopedErrorCodes",
    "app_to_http",
    "goaway_timeout_code",
    "clamp_app_code",
    "http_to_app",
]
