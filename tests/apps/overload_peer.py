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
import json
import logging
import os
from collections import Counter

from benchmarks._fanout_peer import READY_TIMEOUT, LoadGenerator, parse_args, read_sent, read_window, say


class GroupsLoadGenerator(LoadGenerator):
    """A :class:`LoadGenerator` whose report says, per subscriber, how many frames of each group it read."""

    async def run(self) -> None:
        gate = asyncio.Semaphore(self.args.connect_batch)
        ready = [asyncio.Event() for _ in self.subscribers]
        tasks = [asyncio.ensure_future(self.subscribe(subscriber, gate, event))
                 for subscriber, event in zip(self.subscribers, ready, strict=True)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.gather(*(event.wait() for event in ready))
        say("ready", self.connected, len(self.subscribers) - self.connected)
        begin, end, grace = await read_window()
        self.window = (begin, end)
        expected: asyncio.Task[int | None] = asyncio.ensure_future(read_sent())
        try:
            await self.wait_for_frames(expected, end + grace)
        finally:
            expected.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        say(json.dumps({"subscribers": [
            {"received": len(s.seen), "frames": s.frames, "latencies_us": s.latencies_us, "error": s.error,
             "groups": sorted(Counter(group for group, _ in s.seen).items())}
            for s in self.subscribers]}))


def main() -> None:
    args = parse_args()
    if args.mode != "subscribe":
        raise SystemExit("only 'subscribe' is served here; the publisher is benchmarks._fanout_peer's")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.mode}[{os.getpid()}] %(message)s")
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(GroupsLoadGenerator(args).run())


if __name__ == "__main__":
    main()
