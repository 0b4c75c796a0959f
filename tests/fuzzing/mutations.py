"""Mutation operators for encoded messages, drawn by Hypothesis or by a seeded RNG.

Each operator is a small frozen value, so a failing case prints as something
readable (``LieLength(index=0, value=1152921504606846976, width=8)``) and
Hypothesis can shrink it. Positions are taken modulo the data's length when
applied, so any operator applies to any input.

:func:`mutation_ops` (Hypothesis) and :func:`random_ops` (a
:class:`random.Random`, for the deep run) draw the same operators with the
same interesting values; :func:`apply` is shared.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from moqt_asgi.protocol.limits import Limits
from moqt_asgi.protocol.lite_wire import MAX_HOPS
from moqt_asgi.protocol.wire import MAX_VARINT, NeedMore, decode_varint

from .wire import VARINT_WIDTHS, Wire, varint_of_width


@dataclass(frozen=True, slots=True)
class LieLength:
    """Replace the length prefix of message ``index`` with ``value`` written in ``width`` bytes (0: shortest).

    ``relative``: ``value`` is added to the true length (a few bytes more or less than the body).
    """

    index: int
    value: int
    width: int = 0
    relative: bool = False

    def claimed(self, true_length: int) -> int:
        return min(MAX_VARINT, max(0, true_length + self.value)) if self.relative else self.value


@dataclass(frozen=True, slots=True)
class Flip:
    pos: int
    mask: int


@dataclass(frozen=True, slots=True)
class Insert:
    pos: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    pos: int
    count: int


@dataclass(frozen=True, slots=True)
class Truncate:
    keep: int
    """Bytes kept, counted from the end when negative."""


@dataclass(frozen=True, slots=True)
class Widen:
    """Re-encode the varint starting at ``pos`` in ``width`` bytes (a non-minimal varint)."""

    pos: int
    width: int


@dataclass(frozen=True, slots=True)
class Plant:
    """Write ``value`` as a ``width``-byte varint at ``pos``, over the varint there (``replace``) or inserted."""

    pos: int
    value: int
    width: int = 0
    replace: bool = True


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Copy ``count`` bytes from ``start`` to ``pos`` (a repeated field or message)."""

    start: int
    count: int
    pos: int


ByteOp = Flip | Insert | Delete | Truncate | Widen | Plant | Duplicate
Mutation = LieLength | ByteOp


def interesting_values(limits: Limits) -> tuple[int, ...]:
    """Numbers at the edges of what decoders check: limits, varint widths, counts, 2**62."""
    edges = {
        0, 1, 2, 63, 64, 255, 256, (1 << 14) - 1, 1 << 14, 0xFFFF, 1 << 16, (1 << 30) - 1, 1 << 30,
        (1 << 32) - 1, 1 << 32, 1 << 60, MAX_VARINT - 1, MAX_VARINT, MAX_HOPS, MAX_HOPS + 1, 1200, 1201, 8192, 8193,
    }
    for limit in (limits.max_message_size, limits.max_path_length, limits.max_frame_size, limits.max_versions,
                  limits.max_parameters, limits.max_announcements):
        edges.update((limit - 1, limit, limit + 1))
    return tuple(sorted(value for value in edges if 0 <= value <= MAX_VARINT))


LENGTH_DELTAS = (-3, -2, -1, 0, 1, 2, 3, 1000)
"""Relative length lies: a few bytes short or long (0 with a width: the true length, non-minimally encoded)."""


# -- applying ---------------------------------------------------------------------------

def apply(wire: Wire, ops: Sequence[Mutation]) -> bytes:
    """The bytes of ``wire`` with its length lies applied, then every byte operator in order."""
    lies: dict[int, LieLength] = {}
    framed = [i for i, part in enumerate(wire) if part.length != "none"]
    for op in ops:
        if isinstance(op, LieLength) and framed:
            lies[framed[op.index % len(framed)]] = op
    data = bytearray()
    for i, part in enumerate(wire):
        lie = lies.get(i)
        data += part.encode(lie.claimed(len(part.body)), lie.width) if lie is not None else part.encode()
    for op in ops:
        if not isinstance(op, LieLength):
            data = _apply_byte_op(data, op)
    return bytes(data)


def _apply_byte_op(data: bytearray, op: ByteOp) -> bytearray:
    size = len(data)
    if isinstance(op, Truncate):
        keep = op.keep if op.keep >= 0 else size + op.keep
        return data[: max(0, min(size, keep))]
    if isinstance(op, Insert):
        pos = op.pos % (size + 1)
        return data[:pos] + op.data + data[pos:]
    if isinstance(op, Duplicate):
        if not size:
            return data
        start = op.start % size
        pos = op.pos % (size + 1)
        return data[:pos] + data[start : start + op.count] + data[pos:]
    if not size:
        return data
    pos = op.pos % size
    if isinstance(op, Flip):
        data[pos] ^= (op.mask & 0xFF) or 0x01
        return data
    if isinstance(op, Delete):
        return data[:pos] + data[pos + max(1, op.count) :]
    value, end = _varint_at(data, pos)
    if isinstance(op, Widen):
        return data[:pos] + varint_of_width(value, op.width) + data[end:]
    planted = varint_of_width(min(op.value, MAX_VARINT), op.width)
    return data[:pos] + planted + (data[end:] if op.replace else data[pos:])


def _varint_at(data: bytearray, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and where it ends; a varint cut off by the end counts as the lone first byte."""
    try:
        return decode_varint(data, pos)
    except NeedMore:
        return data[pos] & 0x3F, pos + 1


# -- drawing with Hypothesis --------------------------------------------------------------

def _positions() -> st.SearchStrategy[int]:
    return st.integers(0, 1 << 12)


@functools.lru_cache(maxsize=16)
def mutation_ops(limits: Limits, *, max_ops: int = 3) -> st.SearchStrategy[list[Mutation]]:
    """One to ``max_ops`` mutations of any wire, length lies included (built once per ``limits``)."""
    widths = st.sampled_from((0, *VARINT_WIDTHS))
    values = st.one_of(st.sampled_from(interesting_values(limits)), st.integers(0, MAX_VARINT))
    op: st.SearchStrategy[Mutation] = st.one_of(
        st.builds(LieLength, st.integers(0, 7), st.sampled_from(LENGTH_DELTAS), widths, st.just(True)),
        st.builds(LieLength, st.integers(0, 7), values, widths, st.just(False)),
        st.builds(Flip, _positions(), st.integers(1, 255)),
        st.builds(Insert, _positions(), st.binary(min_size=1, max_size=8)),
        st.builds(Delete, _positions(), st.integers(1, 8)),
        st.builds(Truncate, st.integers(-16, 1 << 12)),
        st.builds(Widen, _positions(), st.sampled_from((2, 4, 8))),
        st.builds(Plant, _positions(), values, widths, st.booleans()),
        st.builds(Duplicate, _positions(), st.integers(1, 32), _positions()),
    )
    return st.lists(op, min_size=1, max_size=max_ops)


# -- drawing with a seeded RNG (the deep run) ------------------------------------------------

_WEIGHTS = (("lie", 25), ("flip", 15), ("insert", 10), ("delete", 10), ("truncate", 10), ("widen", 10),
            ("plant", 15), ("duplicate", 5))
_KINDS = tuple(kind for kind, _ in _WEIGHTS)
_KIND_WEIGHTS = tuple(weight for _, weight in _WEIGHTS)


def random_ops(rng: random.Random, wire: Wire, limits: Limits, *, max_ops: int = 3) -> list[Mutation]:
    """Like :func:`mutation_ops`, from ``rng``, for ``wire``: positions fall inside the data, values near the edges."""
    size = sum(len(part.encode()) for part in wire) or 1
    framed = sum(1 for part in wire if part.length != "none") or 1
    edges = interesting_values(limits)

    def value() -> int:
        return rng.choice(edges) if rng.random() < 0.7 else rng.randrange(MAX_VARINT + 1)

    def width() -> int:
        return rng.choice((0, 0, *VARINT_WIDTHS))

    ops: list[Mutation] = []
    for kind in rng.choices(_KINDS, _KIND_WEIGHTS, k=rng.randint(1, max_ops)):
        pos = rng.randrange(size + 1)
        if kind == "lie":
            if rng.random() < 0.5:
                ops.append(LieLength(rng.randrange(framed), rng.choice(LENGTH_DELTAS), width(), True))
            else:
                ops.append(LieLength(rng.randrange(framed), value(), width()))
        elif kind == "flip":
            ops.append(Flip(pos, rng.randrange(1, 256)))
        elif kind == "insert":
            ops.append(Insert(pos, rng.randbytes(rng.randint(1, 8))))
        elif kind == "delete":
            ops.append(Delete(pos, rng.randint(1, 8)))
        elif kind == "truncate":
            ops.append(Truncate(rng.randrange(size)))
        elif kind == "widen":
            ops.append(Widen(pos, rng.choice((2, 4, 8))))
        elif kind == "plant":
            ops.append(Plant(pos, value(), width(), rng.random() < 0.7))
        else:
            ops.append(Duplicate(rng.randrange(size), rng.randint(1, 32), pos))
    return ops


__all__ = [
    "ByteOp",
    "Delete",
    "Duplicate",
    "Flip",
    "Insert",
    "LieLength",
    "Mutation",
    "Plant",
    "Truncate",
    "Widen",
    "apply",
    "LENGTH_DELTAS",
    "interesting_values",
    "mutation_ops",
    "random_ops",
]
