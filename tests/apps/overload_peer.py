"""The fan-out benchmark's load generator, reporting which groups each subscriber received.

    python -m tests.apps.overload_peer subscribe URL FINGERPRINT --count 20

Same processes, stdin/stdout protocol and subscribers as
:mod:`benchmarks._fanout_peer` (the publisher is that module's), except
that each subscriber's entry in the report also holds ``groups``: for every
group of the window it read a frame of, how many of its frames, so a test
can tell a subscriber that still receives the newest groups from one that
stalled on old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from typing import Any

from benchmarks._fanout_peer import LoadGenerator, Subscriber, parse_args


class GroupsLoadGenerator(LoadGenerator):
    """A :class:`LoadGenerator` whose report says, per subscriber, how many frames of each group it read."""

    def report(self, subscriber: Subscriber) -> dict[str, Any]:
        return {**super().report(subscriber),
                "groups": sorted(Counter(group for group, _ in subscriber.seen).items())}


def main() -> None:
    args = parse_args()
    if args.mode != "subscribe":
        raise SystemExit("only 'subscribe' is served here; the publisher is benchmarks._fanout_peer's")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.mode}[{os.getpid()}] %(message)s")
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(GroupsLoadGenerator(args).run())


if __name__ == "__main__":
    main()
