"""The WebSocket closing handshake of an ASGI ``websocket`` scope (:class:`~moqt_asgi.websocket.asgi.ASGIPipe`).

After ``websocket.close`` the pipe waits, for at most
:data:`~moqt_asgi.websocket.asgi.CLOSE_REPLY_TIMEOUT`, for the peer's Close
(``websocket.disconnect``) before the ASGI app returns. Returning earlier lets
the server close TCP (and TLS) first, and a Close frame that then arrives is
data after ``close_notify``: Hypercorn's TCP server logged a traceback for it.
"""

from __future__ import annotations

import asyncio

import pytest

from moqt_asgi.types import Message
from moqt_asgi.websocket import asgi
from moqt_asgi.websocket.asgi import ASGIPipe

from .helpers import within


class _Peer:
    """An ASGI server's side of one WebSocket: what the app sent, and the messages it will receive."""

    def __init__(self, reply_after: float | None, chatter: int = 0) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[str] = []
        self.reply_after = reply_after
        self.chatter = chatter
        self.disconnect_delivered = False

    async def receive(self) -> Message:
        message = await self.inbox.get()
        if message["type"] == "websocket.disconnect":
            self.disconnect_delivered = True
        return message

    async def send(self, message: Message) -> None:
        self.sent.append(message["type"])
        if message["type"] == "websocket.close" and self.reply_after is not None:
            asyncio.get_running_loop().call_later(self.reply_after, self._reply)

    def _reply(self) -> None:
        for n in range(self.chatter):  # what the peer sent before it read our Close
            self.inbox.put_nowait({"type": "websocket.receive", "bytes": bytes([n])})
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})


async def test_close_returns_after_the_peers_close_reply() -> None:
    peer = _Peer(reply_after=0.1, chatter=3)
    pipe = ASGIPipe(peer.receive, peer.send)
    await within(pipe.close())
    assert peer.sent == ["websocket.close"]
    assert peer.disconnect_delivered  # the app had not returned before the peer's Close
    assert peer.inbox.empty()  # what came before the Close was read and dropped


async def test_close_sees_the_reply_through_a_reader_already_receiving() -> None:
    peer = _Peer(reply_after=0.1)
    pipe = ASGIPipe(peer.receive, peer.send)
    reader = asyncio.create_task(pipe.receive())  # the session's reader task, blocked in receive()
    await asyncio.sleep(0)
    await within(pipe.close())
    assert peer.disconnect_delivered
    assert reader.done() and reader.result() is None


async def test_close_gives_up_on_a_peer_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asgi, "CLOSE_REPLY_TIMEOUT", 0.2)
    peer = _Peer(reply_after=None)
    pipe = ASGIPipe(peer.receive, peer.send)
    await within(pipe.close())
    assert peer.sent == ["websocket.close"]
    assert not peer.disconnect_delivered


async def test_close_after_the_peer_left_sends_nothing() -> None:
    peer = _Peer(reply_after=None)
    peer.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
    pipe = ASGIPipe(peer.receive, peer.send)
    assert await pipe.receive() is None
    await within(pipe.close())
    assert peer.sent == []
