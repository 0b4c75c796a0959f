"""Reading UDP in batches: a readable socket is drained up to READ_BATCH datagrams per event-loop step."""

from __future__ import annotations

import asyncio
import logging
import socket
from asyncio import selector_events
from typing import Any

import pytest

from moqt_asgi.transport import udp
from moqt_asgi.transport.udp import READ_BATCH, IncompatibleAsyncio, check_batch_reading, read_in_batches


class Counting(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


async def received_in_three_steps(batched: bool, count: int = 100) -> tuple[int, int]:
    """Send ``count`` datagrams at once; how many arrived after three loop steps, and after all."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Counting, local_addr=("127.0.0.1", 0))
    try:
        if batched:
            assert read_in_batches(transport)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(count):
                sender.sendto(index.to_bytes(2, "big"), transport.get_extra_info("sockname"))
        for _ in range(3):
            await asyncio.sleep(0)
        early = len(protocol.received)
        async with asyncio.timeout(5):
            while len(protocol.received) < count:  # noqa: ASYNC110 - the datagrams are already queued
                await asyncio.sleep(0)
        assert protocol.received == [index.to_bytes(2, "big") for index in range(count)]  # all, in order
        return early, len(protocol.received)
    finally:
        transport.close()


async def test_a_batched_socket_is_drained_in_one_step_where_asyncio_reads_one_datagram() -> None:
    stock, _ = await received_in_three_steps(batched=False)
    batched, total = await received_in_three_steps(batched=True)
    assert stock <= 3
    assert batched >= READ_BATCH
    assert total == 100


async def test_a_closed_transport_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Counting, local_addr=("127.0.0.1", 0))
    transport.close()
    assert not read_in_batches(transport)


async def test_a_moved_asyncio_name_is_named_and_asyncio_reads_as_before(monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    check_batch_reading()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Counting, local_addr=("127.0.0.1", 0))
    try:
        monkeypatch.setattr(selector_events, "_SelectorDatagramTransport", None)  # as if asyncio renamed it
        with pytest.raises(IncompatibleAsyncio, match=r"selector_events\._SelectorDatagramTransport"):
            check_batch_reading()
        monkeypatch.setattr(udp, "_warned_batches", False)
        with caplog.at_level(logging.WARNING, logger="moqt_asgi.transport"):
            assert not read_in_batches(transport)
    finally:
        transport.close()
    assert "reading one datagram per event-loop step" in caplog.text
