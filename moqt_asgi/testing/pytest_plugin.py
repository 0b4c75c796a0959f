"""pytest fixtures for testing MoQ applications in memory.

Installed with the package as a ``pytest11`` entry point, so the fixtures are
there in any project that has ``moqt-asgi`` installed (where plugin autoloading
is off, add ``pytest_plugins = ["moqt_asgi.testing.pytest_plugin"]`` to a
``conftest.py``). The fixtures are async fixtures of pytest-asyncio (in its
strict mode too: mark the tests ``@pytest.mark.asyncio``)::

    from moqt_asgi import MoQ
    from moqt_asgi.testing.pytest_plugin import MoQConnect

    async def test_clock(moq_connect: MoQConnect, no_leaked_tasks: None) -> None:
        client = await moq_connect(app, path="/clock")
        track = await client.subscribe("clock", "seconds")
        ...

* ``moq_connect``: ``await moq_connect(app, **options)`` returns a running
  client session (the options are :class:`~moqt_asgi.testing.MemoryPair`'s);
  every session it made is closed, and its server side finished, at teardown.
* ``moq_pair``: the same, returning the :class:`~moqt_asgi.testing.MemoryPair`
  (``.client`` and ``.server``).
* ``no_leaked_tasks``: fails the test if tasks it started are still running at
  its end (after a short grace period). It is set up before ``moq_pair`` and
  ``moq_connect``, so their sessions are closed by the time it looks; request
  it before your own fixtures that start tasks, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar, cast

import pytest

from ..app import MoQ
from ..engine.session import Session
from .pair import MemoryPair

F = TypeVar("F", bound=Callable[..., Any])


def async_fixture(function: F) -> F:
    """pytest-asyncio's fixture (so that its strict mode runs it too), or a plain one without pytest-asyncio."""
    try:
        from pytest_asyncio import fixture
    except ImportError:  # another plugin that runs async fixtures (anyio, ...)
        return cast(F, pytest.fixture(function))
    return cast(F, fixture(function))


LEAK_GRACE = 1.0
"""Seconds the tasks a test started have to finish after it, before ``no_leaked_tasks`` fails it."""


class MoQConnect(Protocol):
    """The ``moq_connect`` fixture: ``await moq_connect(app, **options)`` → a running client session."""

    async def __call__(self, app: MoQ, **options: Any) -> Session: ...


class MoQPairFactory(Protocol):
    """The ``moq_pair`` fixture: ``await moq_pair(app, **options)`` → an open :class:`MemoryPair`."""

    async def __call__(self, app: MoQ, **options: Any) -> MemoryPair: ...


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Set ``no_leaked_tasks`` up before ``moq_pair`` / ``moq_connect``, whatever the order they were asked in.

    Fixtures are torn down in reverse order: this way the pairs are closed
    before the check for leaked tasks runs.
    """
    for item in items:
        names: list[str] | None = getattr(item, "fixturenames", None)
        if not names or "no_leaked_tasks" not in names:
            continue
        pairs = [names.index(name) for name in ("moq_pair", "moq_connect") if name in names]
        if pairs and names.index("no_leaked_tasks") > min(pairs):
            names.remove("no_leaked_tasks")
            names.insert(min(pairs), "no_leaked_tasks")


@async_fixture
async def moq_pair() -> AsyncIterator[MoQPairFactory]:
    """A factory of open :class:`~moqt_asgi.testing.MemoryPair` objects, all closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_pair(app: MoQ, **options: Any) -> MemoryPair:
            return await stack.enter_async_context(MemoryPair(app, **options))

        yield open_pair


@async_fixture
async def moq_connect(moq_pair: MoQPairFactory) -> MoQConnect:
    """A factory of client sessions connected in memory to an app, all closed at teardown."""

    async def connect(app: MoQ, **options: Any) -> Session:
        return (await moq_pair(app, **options)).client

    return connect


@async_fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails the test if it leaves tasks running."""
    before = set(asyncio.all_tasks())
    yield
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEAK_GRACE
    while True:
        leaked = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
        if not leaked or loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    if leaked:
        pytest.fail(f"tasks left running: {leaked}")


__all__ = [
    "LEAK_GRACE",
    "MoQConnect",
    "MoQPairFactory",
    "moq_connect",
    "moq_pair",
    "no_leaked_tasks",
    "pytest_collection_modifyitems",
]
