"""Error codes and the exceptions that carry them.

One internal enum (:class:`ErrorCode`) is used everywhere in the engine; the
numbers are moq-lite's flat code space. Each dialect translates them at the
transport edge (:mod:`.codes`): every lite version to moq-rs's scoped
registries, gomoqt to its own tables.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """moq-lite error codes, used as stream reset, stop-sending and close codes."""

    CANCEL = 0
    REQUIRED_EXTENSION = 1
    OLD = 2
    TIMEOUT = 3
    TRANSPORT = 4
    DECODE = 5
    UNAUTHORIZED = 6
    VERSION = 9
    UNEXPECTED_STREAM = 10
    BOUNDS_EXCEEDED = 11
    DUPLICATE = 12
    NOT_FOUND = 13
    WRONG_SIZE = 14
    PROTOCOL_VIOLATION = 15
    UNEXPECTED_MESSAGE = 16
    UNSUPPORTED = 17
    TOO_LARGE = 18
    TOO_MANY_PARAMETERS = 19
    INVALID_ROLE = 20


APPLICATION_CODE_BASE = 64
"""Application error ``n`` travels as ``64 + n``."""

GOAWAY_TIMEOUT = 0x30
"""Session close code for a peer that did not leave within a GOAWAY's grace period.

An internal value outside :class:`ErrorCode` (below the application range):
the scoped and gomoqt dialects map it on the way out to their session code
``0x10`` (GOAWAY_TIMEOUT), and the flat codes, which have none, close
with ``TIMEOUT`` instead (each :class:`~.codes.ErrorCodes` map says which in
its ``goaway_timeout``). Read back from the wire it is ``ErrorCode.TIMEOUT``.
"""


def describe(code: int) -> str:
    """A human-readable name for a wire code."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        if code >= APPLICATION_CODE_BASE:
            return f"application({code - APPLICATION_CODE_BASE})"
        return f"unknown({code})"


class MoQError(Exception):
    """Base class of every error this package raises on purpose."""


class ProtocolError(MoQError):
    """The peer broke the protocol; ``code`` is what we tell it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({describe(self.code)})"


class DecodeError(ProtocolError):
    """A message could not be decoded."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.DECODE, message)


class SessionClosed(MoQError):
    """The session (or its transport connection) is closed."""

    def __init__(self, code: int = 0, reason: str = "", *, remote: bool = False) -> None:
        who = "peer" if remote else "locally"
        super().__init__(f"session closed {who} with code {code} ({describe(code)}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason
        self.remote = remote

    @property
    def abrupt(self) -> bool:
        """Ended by an error or by silence (an idle timeout), not by a close with code 0."""
        return self.code != 0 or "idle timeout" in self.reason.lower()


class StreamError(MoQError):
    """A stream was reset or stopped; ``code`` is the wire code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"stream error {code} ({describe(code)})")
        self.code = code


class SubscribeError(StreamError):
    """A subscription was refused or aborted by the publisher."""


class SetupRejected(MoQError):
    """The server refused the session during setup."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"setup rejected with code {code} ({describe(code)}){': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason
