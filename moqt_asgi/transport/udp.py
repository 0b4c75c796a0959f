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

:func:`read_in_batches` makes an asyncio datagram transport read up to
:data:`READ_BATCH` datagrams each time its socket is readable, where
asyncio reads one per event-loop step. A server whose loop runs many
callbacks per step (every connection's timers and writes) then reads
its socket once per step: past its capacity the receive queue grows by
what arrives during a step, and ACKs and new handshakes wait seconds in
it behind the audience's traffic. It reaches into asyncio's selector
transport (``_sock``, ``_sock_fd``, the loop's ``_add_reader``):
:func:`check_batch_reading` names what moved, and a loop or transport
without them keeps asyncio's own reader.
"""

from __future__ import annotations

import logging
import socket
from asyncio import selector_events
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


READ_BATCH = 64
"""Datagrams read at most each time a socket is readable (:func:`read_in_batches`)."""


class IncompatibleAsyncio(RuntimeError):
    """asyncio moved a name :func:`read_in_batches` relies on."""


def check_batch_reading() -> None:
    """Raise :class:`IncompatibleAsyncio` naming what moved, unless asyncio has what :func:`read_in_batches` uses."""
    missing = [f"BaseSelectorEventLoop.{name}" for name in ("_add_reader",)
               if not hasattr(selector_events.BaseSelectorEventLoop, name)]
    transport_class = getattr(selector_events, "_SelectorDatagramTransport", None)
    if transport_class is None:
        missing.append("selector_events._SelectorDatagramTransport")
    else:
        init_names = set(getattr(selector_events, "_SelectorTransport").__init__.__code__.co_names)  # noqa: B009
        missing += [f"_SelectorTransport.{name}" for name in ("_sock", "_sock_fd") if name not in init_names]
        missing += [f"_SelectorDatagramTransport.{name}" for name in ("max_size", "_fatal_error")
                    if not hasattr(transport_class, name)]
    if missing:
        raise IncompatibleAsyncio(f"asyncio moved names moqt_asgi relies on to read UDP in batches: "
                                  f"{', '.join(missing)}")


def read_in_batches(transport: Any, batch: int = READ_BATCH) -> bool:
    """Let ``transport`` (asyncio's datagram transport) read up to ``batch`` datagrams per wake-up.

    Call it once the transport reads (after ``create_datagram_endpoint``
    returned, or with ``loop.call_soon`` from ``connection_made``). Returns
    False, leaving asyncio's reader, for another loop (uvloop) or transport
    (qh3's batched one), or when asyncio moved a name (logged once).
    """
    global _warned_batches
    try:
        check_batch_reading()
    except IncompatibleAsyncio as exc:
        if not _warned_batches:
            _warned_batches = True
            logger.warning("%s; reading one datagram per event-loop step", exc)
        return False
    transport_class = getattr(selector_events, "_SelectorDatagramTransport")  # noqa: B009 - checked above
    loop = getattr(transport, "_loop", None)
    if not isinstance(transport, transport_class) or not isinstance(loop, selector_events.BaseSelectorEventLoop) \
            or transport.is_closing():
        return False
    sock, protocol = transport._sock, transport.get_protocol()
    max_size = int(transport.max_size)

    def ready() -> None:
        for _ in range(batch):
            if transport.is_closing():
                return
            try:
                data, addr = sock.recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal read error on datagram transport")
                return
            protocol.datagram_received(data, addr)

    add_reader: Any = getattr(loop, "_add_reader")  # noqa: B009 - private in the stubs; checked above
    add_reader(transport._sock_fd, ready)
    return True


_warned_batches = False


__all__ = ["READ_BATCH", "SOCKET_BUFFER", "IncompatibleAsyncio", "check_batch_reading", "grow_socket_buffers",
           "read_in_batches"]
