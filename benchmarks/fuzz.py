"""``python -m benchmarks.fuzz``: the codec fuzz properties at depth, a million inputs per message family.

The test suite runs each property a few dozen times (``tests/test_fuzz_codecs.py``);
this runs them until every message family has seen ``--inputs`` inputs in total
across the versions that have it. Hypothesis draws valid messages (the same
strategies as the suite); each one is first checked to round-trip, then mutated
``--batch`` times by a RNG seeded from Hypothesis (the same operators the suite
draws: flipped, inserted, deleted bytes, cuts, lying length prefixes,
non-minimal and near-2**62 varints), and every ``--noise``-th input is the
message's type bytes followed by random bytes. Every input counts once.

An *unexpected* failure is any exception other than our ``ProtocolError``, a
``ProtocolError`` with an unknown code, a read that waited for more bytes than
the limits allow, a decoded value that does not round-trip, or a valid message
that does not. The run exits with status 1 if there was any, and writes the
inputs to ``--failures`` (JSON lines, the format of ``tests/fuzzing/corpus/codecs/``)
so they can join the regression corpus.

The engine fuzz tests (a raw peer against real sessions, ``tests/test_fuzz_engine.py``)
are not repeated here; run them longer with ``MOQT_FUZZ_SCALE=50 python -m pytest
tests/test_fuzz_engine.py`` (50 times the suite's example counts).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import math
import os
import platform
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from moqt_asgi.protocol.errors import ErrorCode
from tests.fuzzing.corpus import Entry, append
from tests.fuzzing.harness import UnexpectedFailure, check_decode, check_roundtrip
from tests.fuzzing.mutations import apply, random_ops
from tests.fuzzing.strategies import CHUNKS, valid_messages
from tests.fuzzing.targets import FAMILIES, LIMITS, TARGETS_BY_NAME, targets_of
from tests.fuzzing.wire import to_bytes

EXAMPLES_PER_UNIT = 600
"""Hypothesis examples per work unit (a few seconds of work): Hypothesis's per-run bookkeeping grows with the
examples of one run, and ``--seconds`` is checked between units."""
MAX_FAILURES_KEPT = 20
"""Failing inputs kept per work unit."""


@dataclass
class Tally:
    """What a batch of inputs did to one family's decoders."""

    inputs: int = 0
    decoded: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    unexpected: int = 0
    failures: list[tuple[Entry, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.decoded += other.decoded
        self.codes.update(other.codes)
        self.unexpected += other.unexpected
        self.failures += other.failures
        self.seconds += other.seconds

    def record(self, entry: Entry, problem: str) -> None:
        self.unexpected += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((entry, problem))


@dataclass(frozen=True)
class Unit:
    family: str
    target: str
    examples: int
    batch: int
    noise: int
    seed: int


def run_unit(unit: Unit) -> tuple[Unit, Tally]:
    """Run one unit of work (in a worker process): ``examples`` Hypothesis examples of one target."""
    target = TARGETS_BY_NAME[unit.target]
    tally = Tally()
    started = time.process_time()

    def decode(limits_name: str, data: bytes, chunk: int, origin: str) -> None:
        tally.inputs += 1
        try:
            outcome = check_decode(target, limits_name, LIMITS[limits_name], data, chunk)
        except UnexpectedFailure as exc:
            tally.record(Entry(target.name, limits_name, data, chunk, note=f"{origin}: {exc.problem}"), str(exc))
            return
        except Exception as exc:  # the harness itself broke: keep the input all the same
            tally.record(Entry(target.name, limits_name, data, chunk, note=f"{origin}: harness error {exc!r}"),
                         traceback.format_exc())
            return
        if outcome.code is None:
            tally.decoded += 1
        else:
            tally.codes[outcome.code] += 1

    @settings(max_examples=unit.examples, deadline=None, database=None, phases=[Phase.generate], print_blob=False,
              suppress_health_check=list(HealthCheck))
    @seed(unit.seed)
    @given(valid_messages(target), st.integers(0, (1 << 64) - 1))
    def examples(pair: tuple[str, Any], rng_seed: int) -> None:
        limits_name, msg = pair
        limits = LIMITS[limits_name]
        rng = random.Random(rng_seed)
        wire = target.encode(limits, msg)
        tally.inputs += 1
        try:
            check_roundtrip(target, limits, msg, rng.choice(CHUNKS))
            tally.decoded += 1
        except Exception as exc:
            tally.record(Entry(target.name, limits_name, to_bytes(wire), note=f"round trip of {msg!r}: {exc!r}"),
                         traceback.format_exc())
        head = wire[0].head if wire else b""
        for i in range(1, unit.batch + 1):
            if unit.noise and i % unit.noise == 0:
                decode(limits_name, head + rng.randbytes(rng.randrange(97)), rng.choice(CHUNKS), "noise")
            else:
                ops = random_ops(rng, wire, limits)
                decode(limits_name, apply(wire, ops), rng.choice(CHUNKS), f"{msg!r} mutated by {ops!r}")

    try:
        examples()
    except Exception as exc:  # a strategy or the harness broke (not a decoder): counted, and the run goes on
        tally.record(Entry(target.name, "default", b"", note=f"harness error, no input: {exc!r}"), traceback.format_exc())
    tally.seconds = time.process_time() - started
    return unit, tally


def plan(families: list[str], inputs: int, batch: int, noise: int, base_seed: int) -> Iterator[Unit]:
    """Units giving each family ``inputs`` inputs, split evenly over its targets, interleaved across families."""
    per_example = batch + 1
    queues: list[list[Unit]] = []
    for family in families:
        targets = targets_of(family)
        examples = math.ceil(inputs / per_example / len(targets))
        units = []
        for target in targets:
            left, index = examples, 0
            while left > 0:
                count = min(EXAMPLES_PER_UNIT, left)
                units.append(Unit(family, target.name, count, batch, noise, _seed(base_seed, target.name, index)))
                left -= count
                index += 1
        queues.append(units)
    longest = max((len(q) for q in queues), default=0)
    for i in range(longest):
        for units in queues:
            if i < len(units):
                yield units[i]


def _seed(base: int, name: str, index: int) -> int:
    return random.Random(f"{base}:{name}:{index}").getrandbits(64)


def run(families: list[str], inputs: int, jobs: int, budget: float | None, batch: int, noise: int, base_seed: int,
        progress: bool) -> tuple[dict[str, Tally], float, bool]:
    """Run the plan on ``jobs`` processes; returns the tallies per family, the wall time, and whether it all ran."""
    tallies = {family: Tally() for family in families}
    units = list(plan(families, inputs, batch, noise, base_seed))
    started = time.monotonic()
    done = 0
    complete = True
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: dict[concurrent.futures.Future[tuple[Unit, Tally]], Unit] = {}
        queue = iter(units)
        window = jobs if budget is not None else jobs * 2  # with a budget, queue nothing that would run past it
        while True:
            while len(pending) < window:
                if budget is not None and time.monotonic() - started > budget:
                    complete = False
                    break
                unit = next(queue, None)
                if unit is None:
                    break
                pending[pool.submit(run_unit, unit)] = unit
            if not pending:
                break
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                unit = pending.pop(future)
                try:
                    unit, tally = future.result()
                except Exception as exc:  # the worker itself died
                    tally = Tally()
                    tally.record(Entry(unit.target, "default", b"", note=f"worker error: {exc!r}"), repr(exc))
                tallies[unit.family].add(tally)
                done += 1
                if progress:
                    total = sum(t.inputs for t in tallies.values())
                    print(f"  {done}/{len(units)} units, {total:,} inputs, {time.monotonic() - started:.0f}s "
                          f"({unit.target}: {tally.unexpected} unexpected)", file=sys.stderr, flush=True)
        if not complete:
            for future in pending:
                future.cancel()
    return tallies, time.monotonic() - started, complete and done == len(units)


def code_names(codes: Counter[int]) -> str:
    names = []
    for code, _ in sorted(codes.items(), key=lambda item: -item[1]):
        with contextlib.suppress(ValueError):
            names.append(ErrorCode(code).name.lower())
            continue
        names.append(str(code))
    return ", ".join(names)


def format_table(tallies: dict[str, Tally]) -> str:
    header = ("family", "targets", "inputs", "decoded", "protocol errors", "unexpected", "codes", "CPU s", "distinct codes")
    rows = []
    for family, tally in tallies.items():
        rows.append((family, str(len(targets_of(family))), f"{tally.inputs:,}", f"{tally.decoded:,}",
                     f"{sum(tally.codes.values()):,}", str(tally.unexpected), str(len(tally.codes)),
                     f"{tally.seconds:.0f}", code_names(tally.codes)))
    total = Tally()
    for tally in tallies.values():
        total.add(tally)
    rows.append(("total", str(sum(len(targets_of(f)) for f in tallies)), f"{total.inputs:,}", f"{total.decoded:,}",
                 f"{sum(total.codes.values()):,}", str(total.unexpected), str(len(total.codes)), f"{total.seconds:.0f}", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    numeric = {1, 2, 3, 4, 5, 6, 7}

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000,
                        help="inputs per message family, in total across its versions (default 1,000,000)")
    parser.add_argument("--family", dest="families", action="append", choices=FAMILIES, metavar="NAME",
                        help=f"fuzz only this family (repeatable; default all): {', '.join(FAMILIES)}")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop starting new work after this many seconds (what ran is still reported)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--batch", type=int, default=48,
                        help="inputs derived from each Hypothesis-drawn message (default 48)")
    parser.add_argument("--noise", type=int, default=8,
                        help="every N-th derived input is type bytes then random bytes (default 8; 0 for none)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0: the same run every time)")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures.jsonl"),
                        help="where failing inputs are written (default fuzz-failures.jsonl)")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    if args.inputs < 1 or args.jobs < 1 or args.batch < 1 or args.noise < 0:
        parser.error("--inputs, --jobs and --batch must be positive, --noise non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    families = args.families or list(FAMILIES)
    if not args.quiet:
        print(f"fuzzing {len(families)} families, {args.inputs:,} inputs each, on {args.jobs} process(es)",
              file=sys.stderr, flush=True)
    tallies, wall, complete = run(families, args.inputs, args.jobs, args.seconds, args.batch, args.noise, args.seed,
                                  not args.quiet)
    print()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; {args.jobs} process(es), {wall:.0f}s wall; "
          f"seed {args.seed}, {args.batch} inputs per drawn message"
          + ("" if complete else f"; stopped by the {args.seconds:g}s budget before the planned inputs"))
    print(format_table(tallies))
    failures = [item for tally in tallies.values() for item in tally.failures]
    unexpected = sum(tally.unexpected for tally in tallies.values())
    if unexpected:
        args.failures.parent.mkdir(parents=True, exist_ok=True)
        append(args.failures, [entry for entry, _ in failures])
        print(f"\n{unexpected} unexpected failure(s); {len(failures)} input(s) written to {args.failures} "
              "(append them to tests/fuzzing/corpus/codecs/ to keep them as regression cases). First one:")
        print(failures[0][1])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
