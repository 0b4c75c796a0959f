"""UDP socket buffers large enough for a QUIC endpoint under load.

Linux gives a UDP socket a receive buffer of ``net.core.rmem_default``
(usually 208 KiB), and the kernel charges each datagram's full buffer
(about 2.3 KiB for a 1.2 KB QUIC packet) against it: about 90 packets fit.
A Python QUIC endpoint reads one datagram per event-loop step; when its
process is not scheduled for a few tens of milliseconds (a busy machine, a
slow handler, many connections in one process), a burst from the peer (a
video keyframe, a window's worth of data after a credit update) overflows
the buffer and the kernel drops the rest. QUIC takes the loss for
congestion: the sender halves its window, waits for probe timeouts, and a
live stream falls seconds behind while nothing on either side is busy.

:func:`grow_socket_buffers` asks for :data:`SOCKET_BUFFER` bytes each way
(as moq-rs does: it asks for 8 MiB). The kernel caps the request at
``net.core.rmem_max`` / ``wmem_max`` (Linux then doubles it for its own
bookkeeping); a cap under the request is logged once per process, with
the sysctl to raise.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

logger = logging.getLogger("moqt_asgi.transport")

SOCKET_BUFFER = 4 * 1024 * 1024
"""Bytes asked for each UDP socket's receive and send buffers."""

_warned = False


def _socket_of(endpoint: Any) -> Any:
    """The socket of an asyncio transport (``get_extra_info("socket")``), or ``endpoint`` itself."""
    get_extra_info = getattr(endpoint, "get_extra_info", None)
    if callable(get_extra_info):
        return get_extra_info("socket")
    return endpoint


def grow_socket_buffers(endpoint: Any, size: int = SOCKET_BUFFER) -> tuple[int, int]:
    """Raise the receive and send buffers of a UDP socket (or an asyncio transport's) to ``size`` bytes.

    A buffer already at least that large is left alone; nothing is ever
    shrunk. Returns the ``(receive, send)`` sizes the kernel reports
    afterwards (Linux reports twice what it granted), ``(0, 0)`` when there
    is no socket. Never raises: a socket that refuses is logged and kept as
    it is.
    """
    global _warned
    sock = _socket_of(endpoint)
    if sock is None:
        return 0, 0
    sizes = []
    short = []
    for option, sysctl in ((socket.SO_RCVBUF, "net.core.rmem_max"), (socket.SO_SNDBUF, "net.core.wmem_max")):
        try:
            current = int(sock.getsockopt(socket.SOL_SOCKET, option))
            if current < size:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                current = int(sock.getsockopt(socket.SOL_SOCKET, option))
        except (OSError, AttributeError, ValueError) as exc:
            logger.debug("could not size the buffers of UDP socket %r: %s", sock, exc)
            return 0, 0
        sizes.append(current)
        if current < size:
            short.append(sysctl)
    if short and not _warned:
        _warned = True
        logger.warning("UDP socket buffers are smaller than the %d bytes asked for (receive %d, send %d): raise %s "
                       "or expect packet loss under load", size, sizes[0], sizes[1], " and ".join(short))
    return sizes[0], sizes[1]


__all__ = ["SOCKET_BUFFER", "grow_socket_buffers"]
