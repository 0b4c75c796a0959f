"""Hook H7: Hypercorn's per-connection QUIC timer as one event-loop timer, re-armed only when needed."""

from __future__ import annotations

import asyncio
from typing import Any

import hypercorn.asyncio.worker_context as worker_context
import hypercorn.protocol.quic as hc_quic
import pytest

from moqt_asgi.webtransport.hypercorn_quic import QuicTimer as _QuicTimer

from .conftest import Certs
from .wt_client import hypercorn_server, wt_client


class FakeQuic:
    def __init__(self) -> None:
        self.fired: list[float] = []
        self.next_timer: float | None = None

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)

    def get_timer(self) -> float | None:
        return self.next_timer


class FakeConnection:
    def __init__(self) -> None:
        self.quic = FakeQuic()


class FakeTaskGroup:
    def __init__(self, *, hold: bool = False) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.held: list[Any] = []
        self.hold = hold
        """Keep spawned work until :meth:`release` (to act while it is pending)."""

    def spawn(self, func: Any, *args: Any) -> None:
        if self.hold:
            self.held.append(func(*args))
        else:
            self.tasks.append(asyncio.ensure_future(func(*args)))

    async def release(self) -> None:
        held, self.held = self.held, []
        await asyncio.gather(*held)


class FakeProtocol:
    """What the timer uses of Hypercorn's QuicProtocol: the task group and ``_handle_events`` (ends with send_all)."""

    def __init__(self) -> None:
        self.task_group = FakeTaskGroup()
        self.handled = 0

    async def _handle_events(self, connection: Any, client: Any) -> None:
        self.handled += 1
        await asyncio.sleep(0)
        _QuicTimer.of(self, connection).arm(connection.quic.get_timer())  # what send_all does


async def test_a_later_deadline_keeps_the_handle_and_fires_without_handling() -> None:
    loop = asyncio.get_running_loop()
    protocol, connection = FakeProtocol(), FakeConnection()
    timer = _QuicTimer.of(protocol, connection)
    assert _QuicTimer.of(protocol, connection) is timer
    now = loop.time()
    timer.arm(now + 0.05)
    handle = timer.handle
    assert handle is not None
    timer.arm(now + 0.15)  # later: no new handle
    assert timer.handle is handle and not handle.cancelled()
    await asyncio.sleep(0.08)  # the old handle fired, saw the deadline had moved, and set itself again
    assert connection.quic.fired == [] and protocol.handled == 0
    assert timer.handle is not None and timer.armed_at == now + 0.15
    await asyncio.sleep(0.12)
    await asyncio.gather(*protocol.task_group.tasks)
    assert len(connection.quic.fired) == 1 and connection.quic.fired[0] >= now + 0.15
    assert protocol.handled == 1
    assert timer.handle is None and timer.deadline is None  # get_timer() said None


async def test_an_earlier_deadline_replaces_the_handle_and_none_cancels() -> None:
    loop = asyncio.get_running_loop()
    protocol, connection = FakeProtocol(), FakeConnection()
    timer = _QuicTimer.of(protocol, connection)
    now = loop.time()
    timer.arm(now + 10)
    first = timer.handle
    timer.arm(now + 5)
    assert first is not None and first.cancelled()
    assert timer.handle is not None and timer.armed_at == now + 5
    second = timer.handle
    timer.arm(None)
    assert second.cancelled() and timer.handle is None


async def eventually(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("moved_later", [False, True])
async def test_flushes_while_the_timer_is_handled_only_record_the_deadline(moved_later: bool) -> None:
    loop = asyncio.get_running_loop()
    protocol, connection = FakeProtocol(), FakeConnection()
    protocol.task_group.hold = True
    timer = _QuicTimer.of(protocol, connection)
    connection.quic.next_timer = loop.time() + 30
    due = loop.time()
    timer.arm(due)
    await eventually(lambda: protocol.task_group.held)  # _fire spawned the handling task
    assert timer.running and timer.handle is None
    timer.arm(loop.time() + 60 if moved_later else due)  # a flush meanwhile: recorded, no handle
    assert timer.handle is None
    await protocol.task_group.release()
    assert not timer.running
    if moved_later:  # nothing was due any more: no handle_timer, armed for the new deadline
        assert protocol.handled == 0 and connection.quic.fired == []
        assert timer.handle is not None and timer.armed_at > connection.quic.next_timer
    else:
        assert protocol.handled == 1 and connection.quic.fired == [pytest.approx(loop.time(), abs=1)]
        assert timer.handle is not None and timer.armed_at == connection.quic.next_timer
    timer.arm(None)


@pytest.fixture
def quic_protocols(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Hypercorn QuicProtocol created, with a 0.5 s QUIC idle timeout."""
    created: list[Any] = []
    original = hc_quic.QuicProtocol.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.quic_config.idle_timeout = 0.5
        created.append(self)

    monkeypatch.setattr(hc_quic.QuicProtocol, "__init__", init)
    return created


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


async def test_hypercorn_timer_fires_without_restarting_tasks(certs: Certs, quic_protocols: list[Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    restarts = 0
    original_restart = worker_context.AsyncioSingleTask.restart

    async def counting_restart(self: Any, *args: Any) -> None:
        nonlocal restarts
        restarts += 1
        await original_restart(self, *args)

    monkeypatch.setattr(worker_context.AsyncioSingleTask, "restart", counting_restart)
    async with hypercorn_server(hello, str(certs.cert), str(certs.key)) as port:
        async with wt_client(port) as client:
            for _ in range(5):
                assert (await client.get("/")).body == b"hi"
            [protocol] = quic_protocols
            connection = next(iter(protocol.connections.values()))
            timer = connection.moqt_timer
            assert isinstance(timer, _QuicTimer) and timer.deadline is not None
            # The client stays silent: only the server's timer can end the connection (idle timeout).
            await eventually(lambda: not protocol.connections)
            assert timer.handle is None and timer.deadline is None
        assert restarts == 0
