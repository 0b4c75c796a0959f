"""The codec properties, shared by the test suite and the deep run.

* :func:`check_roundtrip`: a valid message decodes to itself and nothing is
  left on the stream, whatever size the stream's reads come in.
* :func:`check_decode`: decoding any bytes either yields a value (which must
  itself round-trip) or raises our :class:`ProtocolError` with a known code;
  never anything else, and no read ever waits for more bytes than the limits
  let one message (or frame) declare: a length of 2**60 is refused, not
  awaited.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings

from moqt_asgi.protocol.errors import ErrorCode, ProtocolError
from moqt_asgi.protocol.limits import Limits

from .targets import ByteStream, Target, run_sync
from .wire import to_bytes

KNOWN_CODES = frozenset(int(code) for code in ErrorCode)


class UnexpectedFailure(AssertionError):
    """A decoder misbehaved on some input; carries what is needed to replay it."""

    def __init__(self, target: Target, limits_name: str, data: bytes, chunk: int, problem: str) -> None:
        super().__init__(f"{target.name} ({limits_name} limits, reads of {chunk}): {problem}\n  input: {data.hex()}")
        self.target = target
        self.limits_name = limits_name
        self.data = data
        self.chunk = chunk
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Outcome:
    """What decoding one input gave: a value, or the code of the protocol error it raised."""

    value: Any = None
    code: int | None = None

    @property
    def decoded(self) -> bool:
        return self.code is None


def check_roundtrip(target: Target, limits: Limits, msg: Any, chunk: int = 1 << 20) -> None:
    """``decode(encode(msg)) == msg``, and the stream is at its end afterwards."""
    data = to_bytes(target.encode(limits, msg))
    stream = ByteStream(data, chunk)
    decoded = run_sync(target.decode(limits, stream))
    assert decoded.value == msg, f"{target.name}: {msg!r} came back as {decoded.value!r} from {data.hex()}"
    if decoded.reader is not None:
        assert run_sync(decoded.reader.at_eof()), f"{target.name}: bytes left after {msg!r} in {data.hex()}"


def check_decode(target: Target, limits_name: str, limits: Limits, data: bytes, chunk: int = 1 << 20) -> Outcome:
    """Decode ``data`` as the engine would; raise :class:`UnexpectedFailure` on anything but our protocol errors."""
    stream = ByteStream(data, chunk)

    def fail(problem: str) -> UnexpectedFailure:
        return UnexpectedFailure(target, limits_name, data, chunk, problem)

    try:
        decoded = run_sync(target.decode(limits, stream))
    except ProtocolError as exc:
        if exc.code not in KNOWN_CODES:
            raise fail(f"ProtocolError with unknown code {exc.code}: {exc}") from exc
        outcome = Outcome(code=exc.code)
    except Exception as exc:
        raise fail("".join(traceback.format_exception_only(exc)).strip()) from exc
    else:
        outcome = Outcome(decoded.value)
        if decoded.same_variant and target.reencodes(decoded.value):
            try:
                check_roundtrip(target, target.reencode_limits(limits), decoded.value)
            except Exception as exc:
                raise fail(f"decoded {decoded.value!r}, which does not round-trip: {exc!r}") from exc
    if stream.largest_wait > target.wait_limit(limits):
        raise fail(f"a read waited for {stream.largest_wait} bytes, over the limit of {target.wait_limit(limits)}")
    return outcome


SCALE_VARIABLE = "MOQT_FUZZ_SCALE"


def scaled(examples: int) -> int:
    """``examples`` times the ``MOQT_FUZZ_SCALE`` environment variable (default 1), for a longer local run."""
    try:
        scale = float(os.environ.get(SCALE_VARIABLE, "1"))
    except ValueError:
        scale = 1.0
    return max(1, round(examples * scale))


def suite_settings(examples: int) -> settings:
    """Deterministic, bounded settings for the normal test suite (``examples`` scaled by :func:`scaled`)."""
    return settings(max_examples=scaled(examples), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


__all__ = ["KNOWN_CODES", "SCALE_VARIABLE", "Outcome", "UnexpectedFailure", "check_decode", "check_roundtrip", "scaled",
           "suite_settings"]
