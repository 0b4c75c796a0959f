"""Helpers for testing MoQ applications without sockets, or over a simulated network.

* :func:`connect` and :class:`MemoryPair`: an app and a client session joined
  in memory, with the app's routes and setup handlers running
  (:mod:`.pair`); :func:`lifespan` runs the app's startup and shutdown hooks.
* :func:`memory_pair`: the bare in-memory transport (two connected
  :class:`~moqt_asgi.transport.base.Connection` objects), for peers scripted
  byte by byte.
* :class:`UdpRelay`: a loopback UDP relay with delay, loss, reordering and a
  rate limit, recording the QUIC packets it carries (:mod:`.netsim`).
* A pytest plugin (:mod:`.pytest_plugin`, loaded automatically once the
  package is installed) with the fixtures ``moq_connect``, ``moq_pair`` and
  ``no_leaked_tasks``.
"""

from ..transport.memory import MemoryConnection, memory_pair
from .netsim import UdpRelay
from .pair import MemoryPair, VersionLike, connect, lifespan, resolve_version

__all__ = [
    "MemoryConnection",
    "MemoryPair",
    "UdpRelay",
    "VersionLike",
    "connect",
    "lifespan",
    "memory_pair",
    "resolve_version",
]
