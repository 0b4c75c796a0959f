"""Fuzzing the session engine over the in-memory transport, every version.

A raw peer completes the version's session start, then writes fuzzed streams
into a real server session (``serve_connection``): structure-aware ones (a
valid stream type, then messages as they are, mutated or cut short) and
random ones (any stream type, random bytes). After each example the server's
session has either closed with a protocol-level code or still answers; nothing
was logged as a failure; a guard session of the same version on the same app
still receives frames; the peer's connection ends cleanly and leaves no task
behind (``tests/fuzzing/engine.py``). A third test fuzzes the session start
itself (the SETUP of lite-01/02, gomoqt and lite-05/06), and a fourth turns
the roles round: our client's requests answered by a raw server with fuzzed
responses and group streams (``tests/fuzzing/client_engine.py``).

Engine bugs found this way and not fixed yet are listed in
:data:`~tests.fuzzing.engine.KNOWN_ENGINE_BUGS`: the property tests let their
exact signature pass (and keep fuzzing the rest), the corpus keeps each as a
strict xfail. ``MOQT_FUZZ_SCALE=N`` multiplies every example count.

Inputs that once broke something are replayed from ``tests/fuzzing/corpus/engine/``: each line is
``{"version": ..., "streams": [{"kind", "hex", "fin", "label"}...], "expect": ..., "note": ...}``, plus
``"bug"`` naming a :data:`~tests.fuzzing.engine.KNOWN_ENGINE_BUGS` entry while that bug stands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moqt_asgi.protocol.errors import ErrorCode
from moqt_asgi.protocol.limits import DEFAULT_LIMITS
from moqt_asgi.protocol.messages import ClientSetup, LiteSetup
from moqt_asgi.protocol.setup import PARAM_PATH
from moqt_asgi.protocol.versions import GOMOQT_DIALECT, Version, features_of

from .fuzzing.client_engine import answer, consume, judge_client, raw_server, requests_of, unsolicited
from .fuzzing.corpus import ENGINE_CORPUS
from .fuzzing.engine import (
    KNOWN_ENGINE_BUGS,
    VERSIONS,
    Arena,
    LogTrap,
    StreamPlan,
    finished,
    known_bug,
    settle,
    stream_plans,
)
from .fuzzing.harness import scaled
from .fuzzing.mutations import apply, mutation_ops
from .fuzzing.targets import TARGETS_BY_NAME


def engine_settings(examples: int) -> settings:
    """Deterministic and bounded. The arena fixture is shared by all examples of a test on purpose:
    the guard session must survive every one of them."""
    return settings(max_examples=scaled(examples), deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(params=VERSIONS, ids=lambda version: version.name)
async def arena(request: pytest.FixtureRequest, no_leaked_tasks: None) -> AsyncIterator[Arena]:
    async with Arena(request.param).running() as running:
        yield running


@pytest.fixture(params=[v for v in VERSIONS if v.has_setup_stream], ids=lambda version: version.name)
async def setup_arena(request: pytest.FixtureRequest, no_leaked_tasks: None) -> AsyncIterator[Arena]:
    """The versions whose session starts with a SETUP message (lite-03/04 start with none)."""
    async with Arena(request.param).running() as running:
        yield running


async def attack(arena: Arena, plans: list[StreamPlan], tolerated: frozenset[str] = KNOWN_ENGINE_BUGS) -> str:
    """Write ``plans`` from a fresh raw peer and judge the server's reaction."""
    before = set(asyncio.all_tasks())
    with LogTrap().installed() as trap:
        async with arena.peer() as peer:
            for plan in plans:
                await peer.write(plan)
            outcome = await arena.judge(peer, trap, tolerated)
    await finished(before)
    await arena.check_guard()
    return outcome


@pytest.mark.slow
@engine_settings(40)
@given(data=st.data())
async def test_structured_streams(arena: Arena, data: st.DataObject) -> None:
    await attack(arena, data.draw(stream_plans(arena.version), label="streams"))


@pytest.mark.slow
@engine_settings(20)
@given(data=st.data())
async def test_random_streams(arena: Arena, data: st.DataObject) -> None:
    await attack(arena, data.draw(stream_plans(arena.version, structured=False), label="streams"))


# -- the session start -------------------------------------------------------------------------------

def _setup_target(version: Version) -> Any:
    if version.uni_setup:
        return TARGETS_BY_NAME[f"lite_setup@{version.name}"]
    return TARGETS_BY_NAME["client_setup@legacy" if version is GOMOQT_DIALECT else "client_setup@compat"]


def _setup_message(version: Version) -> Any:
    if version.uni_setup:
        return LiteSetup(path="/")
    return ClientSetup((version.number,), {PARAM_PATH: b"/"})


@pytest.mark.slow
@engine_settings(20)
@given(data=st.data())
async def test_fuzzed_session_start(setup_arena: Arena, data: st.DataObject) -> None:
    """A mutated SETUP: the server refuses the connection with a protocol code, or accepts a session, never fails."""
    arena = setup_arena
    version = arena.version
    target = _setup_target(version)
    wire = target.encode(DEFAULT_LIMITS, _setup_message(version))
    payload = apply(wire, data.draw(mutation_ops(DEFAULT_LIMITS), label="mutations"))
    fin = data.draw(st.booleans(), label="fin")
    before = set(asyncio.all_tasks())
    with LogTrap().installed() as trap:
        async with arena.peer(setup=False) as peer:
            stream = await (peer.conn.open_uni() if version.uni_setup else peer.conn.open_bi())
            stream.write(payload, end=fin)
            await settle()
            known = {known_bug(record) for record in trap.records} & KNOWN_ENGINE_BUGS
            if peer.server_conn.is_closed and not peer.sessions:
                closed = peer.server_conn.closed_error()
                assert closed.code != ErrorCode.TRANSPORT, f"setup failed internally: {closed}"
            for session in peer.sessions:  # accepted: bytes after the SETUP went to the session stream
                reason = session.close_reason
                assert known or reason is None or reason.code != ErrorCode.TRANSPORT, f"failed internally: {reason}"
            await peer.leave()
        assert not trap.bad(KNOWN_ENGINE_BUGS), trap.bad(KNOWN_ENGINE_BUGS)
    await finished(before)
    await arena.check_guard()


# -- our client against a raw server ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS, ids=lambda version: version.name)
@engine_settings(20)
@given(data=st.data())
async def test_client_takes_fuzzed_answers(version: Version, data: st.DataObject, no_leaked_tasks: None) -> None:
    """Our client's request answered with fuzzed bytes (and, sometimes, unsolicited streams from the server)."""
    before = set(asyncio.all_tasks())
    with LogTrap().installed() as trap:
        async with raw_server(version) as server:
            request = data.draw(st.sampled_from(requests_of(version)), label="request")
            consumer = asyncio.ensure_future(consume(server, request))
            server.tasks.append(consumer)  # awaited whatever happens below
            await answer(server, data, request)
            if data.draw(st.booleans(), label="unsolicited"):
                await unsolicited(server, data.draw(stream_plans(version), label="unsolicited streams"))
            await judge_client(server, consumer, trap, KNOWN_ENGINE_BUGS)
    await finished(before)


# -- regressions ----------------------------------------------------------------------------------------------

def _lines(directory: Path) -> Iterator[tuple[Path, int, str]]:
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                yield path, number, line


def _engine_corpus() -> list[Any]:
    cases = []
    for path, number, line in _lines(ENGINE_CORPUS):
        raw = json.loads(line)
        plans = [StreamPlan(s["kind"], bytes.fromhex(s["hex"]), bool(s["fin"]), s.get("label", "corpus"))
                 for s in raw["streams"]]
        version = next(v for v in VERSIONS if v.name == raw["version"])
        marks = []
        if raw.get("bug") in KNOWN_ENGINE_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=f"known engine bug {raw['bug']}: {raw.get('note', '')}"))
        cases.append(pytest.param(version, plans, raw.get("expect", ""), marks=marks,
                                  id=f"{path.name}:{number}-{version.name}"))
    return cases


@pytest.mark.parametrize(("version", "plans", "expect"), _engine_corpus())
async def test_engine_corpus(version: Version, plans: list[StreamPlan], expect: str, no_leaked_tasks: None) -> None:
    """Replayed with no known bug tolerated: one that is still there fails (its case is a strict xfail)."""
    async with Arena(version).running() as running:
        outcome = await attack(running, plans, tolerated=frozenset())
    if expect:
        assert outcome == expect


def test_every_version_is_attacked() -> None:
    assert {v.name for v in VERSIONS} == {"moq-lite-01", "moq-lite-02", "moq-lite-03", "moq-lite-04", "moq-lite-05",
                                          "moq-lite-06", "gomoqt"}
    assert all(features_of(v.codec) is not None for v in VERSIONS)
