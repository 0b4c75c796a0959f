"""Stream-level behaviour over real native QUIC (aioquic on both ends)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from moqt_asgi import ErrorCode, MoQ, QuicSettings, TrackWriter
from moqt_asgi.endpoints.dial_quic import dial_quic

from .conftest import Certs
from .helpers import WAIT, native_server

pytestmark = pytest.mark.slow



async def test_subscriber_stops_a_group_midway_and_the_session_carries_on(certs: Certs) -> None:
    """Data the publisher sent before it saw STOP_SENDING must not look like a new stream."""
    app = MoQ()
    stopped_codes: list[int] = []

    async def handler(track: TrackWriter) -> None:
        for n in range(4):
            group = await track.open_group()
            try:
                for _ in range(200 if n == 0 else 40):  # group 0: still in flight when stopped
                    await group.write_frame(bytes([n]) * 16384)
                await group.close()
            except Exception as exc:  # the subscriber stopped this group
                stopped_codes.append(getattr(exc, "code", -1))
            await asyncio.sleep(0.05)

    app.mux.publish("b", handler)
    async with native_server(app, str(certs.cert), str(certs.key)) as server:
        host, port = server.address
        session = await dial_quic(f"moql://{host}:{port}/", fingerprint=certs.fingerprint)
        async with session:
            track = await session.subscribe("b", "t")
            first = await asyncio.wait_for(track.next_group(), WAIT)
            assert first is not None
            assert await first.read_frame() == bytes([0]) * 16384
            first.stop(ErrorCode.CANCEL)  # mid-group: the publisher still has frames in flight
            later = []
            for _ in range(3):
                group = await asyncio.wait_for(track.next_group(), WAIT)
                assert group is not None
                frames = await asyncio.wait_for(group.read_all(), WAIT)
                later.append((group.sequence, len(frames), {f[0] for f in frames}))
            assert not session.closed
        assert later == [(1, 40, {1}), (2, 40, {2}), (3, 40, {3})]
        assert stopped_codes == [ErrorCode.CANCEL]


class _FakeQuic:
    def __init__(self, is_client: bool) -> None:
        self.configuration = type("Cfg", (), {"is_client": is_client})()
        self._streams: dict[int, object] = {}
        self.stopped: list[tuple[int, int]] = []

    def stop_stream(self, stream_id: int, code: int) -> None:
        self.stopped.append((stream_id, code))


class _FakeProtocol:
    def __init__(self) -> None:
        self._quic = _FakeQuic(is_client=True)

    def transmit(self) -> None:
        pass


async def test_data_after_a_local_stop_is_not_a_new_stream() -> None:
    from aioquic.quic import events

    from moqt_asgi.protocol.limits import DEFAULT_LIMITS
    from moqt_asgi.transport.quic import QuicTransport

    transport = QuicTransport(_FakeProtocol(), DEFAULT_LIMITS)  # type: ignore[arg-type]
    transport.handle_event(events.StreamDataReceived(data=b"\x00\x02\x00\x00", end_stream=False, stream_id=3))
    stream = await asyncio.wait_for(transport.accept_uni(), 1)
    assert await stream.read(4) == b"\x00\x02\x00\x00"
    stream.stop(ErrorCode.CANCEL)
    # bytes the peer sent before it saw STOP_SENDING, then its reset
    transport.handle_event(events.StreamDataReceived(data=b"\x05" * 100, end_stream=False, stream_id=3))
    transport.handle_event(events.StreamReset(error_code=ErrorCode.CANCEL, stream_id=3))
    with contextlib.suppress(TimeoutError):
        ghost = await asyncio.wait_for(transport.accept_uni(), 0.05)
        raise AssertionError(f"late data on a stopped stream surfaced as new stream {ghost.stream_id}")
    # a genuinely new stream still gets through
    transport.handle_event(events.StreamDataReceived(data=b"\x00", end_stream=True, stream_id=7))
    assert (await asyncio.wait_for(transport.accept_uni(), 1)).stream_id == 7


async def test_stream_limits_come_from_quic_settings(certs: Certs) -> None:
    """300 groups open at once: all arrive with the default limit; a subscriber allowing 128 gets 128."""
    app = MoQ()
    release = asyncio.Event()

    async def handler(track: TrackWriter) -> None:
        groups = []
        for n in range(300):
            group = await track.open_group()
            await group.write_frame(n.to_bytes(2, "big"))
            groups.append(group)  # none is closed until the subscriber has seen what it can
        await release.wait()
        for group in groups:
            await group.close()

    app.mux.publish("b", handler)

    async def open_groups(settings: QuicSettings) -> int:
        async with native_server(app, str(certs.cert), str(certs.key)) as server:
            host, port = server.address
            session = await dial_quic(f"moql://{host}:{port}/", fingerprint=certs.fingerprint, quic=settings)
            async with session:
                assert session.connection.protocol._quic._remote_max_streams_bidi == 1000  # type: ignore[attr-defined]
                track = await session.subscribe("b", "t")
                seen = 0
                with contextlib.suppress(TimeoutError):
                    while seen < 300:
                        group = await asyncio.wait_for(track.next_group(), 1.0)
                        assert group is not None
                        assert await group.read_frame() == group.sequence.to_bytes(2, "big")
                        seen += 1
                release.set()
            release.clear()
            return seen

    assert await open_groups(QuicSettings()) == 300
    assert await open_groups(QuicSettings(max_streams_uni=128)) == 128
