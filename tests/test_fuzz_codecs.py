"""Property-based fuzzing of every codec: each message family of each version.

Targets (``tests/fuzzing/targets.py``) cover the SETUP framings, lite-01/02,
lite-03..06 and gomoqt's dialect; each decodes bytes the way the engine reads
them off a stream. The properties (``tests/fuzzing/harness.py``):

* a valid message (respecting the limits) survives encode then decode, with
  reads of any size and with every length prefix in 8-byte form;
* mutated messages and arbitrary bytes raise only our ``ProtocolError`` (with a
  known code), or decode to a value that itself round-trips;
* no read waits for more than the limits allow, and a length of 2**60 costs
  no memory.

Examples are few and derandomized here; ``python -m benchmarks.fuzz`` runs the
same properties a million times per family.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from moqt_asgi.protocol.errors import ErrorCode, ProtocolError
from moqt_asgi.protocol.gomoqt import ErrorScope, from_gomoqt, to_gomoqt
from moqt_asgi.protocol.lite06 import AnnounceIds
from moqt_asgi.protocol.messages import AnnounceEnd, AnnounceStart, AnnounceUpdate
from moqt_asgi.protocol.wire import MAX_VARINT

from .fuzzing import corpus
from .fuzzing.harness import check_decode, check_roundtrip, suite_settings
from .fuzzing.mutations import Flip, LieLength, Plant, apply
from .fuzzing.strategies import CHUNKS, FuzzInput, arbitrary_inputs, mutated_inputs, valid_messages, varints
from .fuzzing.targets import FAMILIES, LIMITS, TARGETS, TARGETS_BY_NAME, Target, targets_of
from .fuzzing.wire import to_bytes


def by_target() -> list[Any]:
    return [pytest.param(target, id=target.name) for target in TARGETS]


def test_every_version_and_family_is_a_target() -> None:
    from moqt_asgi.protocol.versions import ALL_VERSIONS

    variants = {target.variant for target in TARGETS}
    assert {version.name for version in ALL_VERSIONS} | {"compat", "legacy"} == variants
    assert len(FAMILIES) >= 21
    assert {"subscribe", "announce_please", "group_header", "frames"} <= {
        family for family in FAMILIES if len(targets_of(family)) == len(ALL_VERSIONS)}


@pytest.mark.parametrize("target", by_target())
def test_round_trip(target: Target) -> None:
    @suite_settings(10)
    @given(valid_messages(target), st.sampled_from(CHUNKS))
    def round_trip(pair: tuple[str, Any], chunk: int) -> None:
        limits_name, msg = pair
        limits = LIMITS[limits_name]
        check_roundtrip(target, limits, msg, chunk)
        wire = target.encode(limits, msg)
        if any(part.length == "varint" for part in wire):  # an 8-byte length prefix is still the same message
            widened = apply(wire, [LieLength(i, 0, 8, relative=True) for i in range(len(wire))])
            assert widened != to_bytes(wire)
            assert check_decode(target, limits_name, limits, widened, chunk).value == msg

    round_trip()


@pytest.mark.slow
@pytest.mark.parametrize("target", by_target())
def test_mutated_messages_raise_only_protocol_errors(target: Target) -> None:
    @suite_settings(20)
    @given(mutated_inputs(target))
    def mutated(case: FuzzInput) -> None:
        check_roundtrip(target, case.limits, case.message)
        check_decode(target, case.limits_name, case.limits, case.data, case.chunk)

    mutated()


@pytest.mark.slow
@pytest.mark.parametrize("target", by_target())
def test_arbitrary_bytes_raise_only_protocol_errors(target: Target) -> None:
    @suite_settings(8)
    @given(arbitrary_inputs(target))
    def arbitrary(case: FuzzInput) -> None:
        check_decode(target, case.limits_name, case.limits, case.data, case.chunk)

    arbitrary()


@pytest.mark.parametrize("family", FAMILIES)
def test_lying_lengths_allocate_nothing(family: str) -> None:
    """A length or count near 2**62 is refused on sight: decoding never allocates much beyond the input.

    Each drawn message gets the huge value as its length prefix, and in turn over every varint-sized spot
    of its bytes (so the counts inside it: versions, parameters, suffixes, hops...).
    """
    lies = st.sampled_from((1 << 30, 1 << 60, MAX_VARINT))

    @suite_settings(5)
    @given(st.sampled_from(targets_of(family)).flatmap(lambda t: st.tuples(st.just(t), valid_messages(t))), lies)
    def lying(pair: tuple[Target, tuple[str, Any]], value: int) -> None:
        target, (limits_name, msg) = pair
        limits = LIMITS[limits_name]
        wire = target.encode(limits, msg)
        size = len(to_bytes(wire))
        inputs = [apply(wire, [LieLength(0, value, 8)])]
        inputs += [apply(wire, [Plant(pos, value, 8)]) for pos in range(min(size, 32))]
        tracemalloc.start()
        try:
            for data in inputs:
                tracemalloc.reset_peak()
                before, _ = tracemalloc.get_traced_memory()
                check_decode(target, limits_name, limits, data)
                _, peak = tracemalloc.get_traced_memory()
                assert peak - before < 64 * 1024 + 8 * len(data), \
                    f"{target.name}: decoding {data[:64].hex()}... ({len(data)} bytes) took {peak - before} bytes"
        finally:
            tracemalloc.stop()

    lying()


def corpus_cases() -> list[Any]:
    return [pytest.param(entry, id=f"{where}-{entry.target}") for where, entry in corpus.load()]


@pytest.mark.parametrize("entry", corpus_cases())
def test_regression_corpus(entry: corpus.Entry) -> None:
    target = TARGETS_BY_NAME[entry.target]
    for chunk in sorted({1, 2, entry.chunk}):
        outcome = check_decode(target, entry.limits, LIMITS[entry.limits], entry.data, chunk)
        if entry.expect:
            seen = "ok" if outcome.code is None else ErrorCode(outcome.code).name.lower()
            assert seen == entry.expect, f"{entry.note}: expected {entry.expect}, got {seen}"


def test_corpus_is_not_empty() -> None:
    assert len(corpus_cases()) >= 20


# -- the harness itself notices trouble -------------------------------------------------------------

def test_harness_reports_a_decoder_that_trusts_a_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that skipped the size check would wait for 2**60 bytes: reported, not awaited."""
    from moqt_asgi.engine._reader import StreamReader

    from .fuzzing.harness import UnexpectedFailure

    async def trusting(self: StreamReader, limit: int) -> bytes:
        return await self.read_exact(await self.read_varint())

    monkeypatch.setattr(StreamReader, "read_message", trusting)
    target = TARGETS_BY_NAME["subscribe@moq-lite-03"]
    with pytest.raises(UnexpectedFailure, match=r"waited for 11529215046068469[0-9]+ bytes, over the limit of 65536"):
        check_decode(target, "default", LIMITS["default"], apply(target.encode(LIMITS["default"], _a_subscribe()),
                                                                 [LieLength(0, 1 << 60, 8)]))


def test_harness_reports_non_protocol_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    from moqt_asgi.protocol.wire import Reader

    from .fuzzing.harness import UnexpectedFailure

    def u8(self: Reader) -> int:
        return (1, 2)[self.remaining + 5]  # an IndexError, as an unchecked read would raise

    monkeypatch.setattr(Reader, "u8", u8)
    target = TARGETS_BY_NAME["subscribe@moq-lite-02"]
    data = apply(target.encode(LIMITS["default"], _a_subscribe()), [Flip(0, 0)])
    with pytest.raises(UnexpectedFailure, match="IndexError"):
        check_decode(target, "default", LIMITS["default"], data)


def _a_subscribe() -> Any:
    from moqt_asgi.protocol.messages import Subscribe

    return Subscribe(1, "demo/clock", "seconds", 3)


# -- stateful and code-mapping pieces of the protocol package ------------------------------------------

announcements = st.one_of(
    st.builds(AnnounceStart, st.sampled_from(("a", "b", "c", "a/b", ""))),
    st.builds(AnnounceEnd, st.integers(0, 6) | varints()),
    st.builds(AnnounceUpdate, st.integers(0, 6) | varints()),
)


@suite_settings(60)
@given(st.lists(announcements, max_size=20), st.integers(1, 4))
@example([AnnounceStart("a"), AnnounceEnd(0), AnnounceEnd(0)], 4)
@example([AnnounceStart("a"), AnnounceStart("a")], 4)
def test_announce_ids_refuse_misuse_with_protocol_errors(sequence: list[Any], limit: int) -> None:
    """lite-06's implicit announce ids: any sequence from a peer is applied or refused, never crashes."""
    ids = AnnounceIds(limit)
    active: dict[int, str] = {}
    next_id = 0
    for msg in sequence:
        try:
            suffix, is_active = ids.apply(msg)
        except ProtocolError as exc:
            assert exc.code in (ErrorCode.PROTOCOL_VIOLATION, ErrorCode.TOO_LARGE)
            continue
        if isinstance(msg, AnnounceStart):
            active[next_id] = suffix
            next_id += 1
        elif isinstance(msg, AnnounceEnd):
            assert active.pop(msg.announce_id) == suffix and not is_active
        else:
            assert active[msg.announce_id] == suffix and is_active
        assert len(ids) == len(active) <= limit


@suite_settings(200)
@given(st.integers(0, MAX_VARINT), st.sampled_from(ErrorScope))
def test_gomoqt_code_maps_are_total(code: int, scope: ErrorScope) -> None:
    """Any code a gomoqt peer sends maps to one of ours, and any of ours to a gomoqt code."""
    ours = from_gomoqt(code, scope)
    assert ours >= 64 or ours in {int(c) for c in ErrorCode}
    assert isinstance(to_gomoqt(code, scope), int)
