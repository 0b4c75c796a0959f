"""Our WebTransport client (``dial_webtransport``) against Hypercorn+MoQ and against the moq-rs server."""

from __future__ import annotations

import asyncio

import moq
import pytest

from moqt_asgi import Broadcast, SetupRejected, TrackMux
from moqt_asgi.endpoints.dial_webtransport import dial_webtransport
from moqt_asgi.protocol.lite06 import LITE_06

from .conftest import Certs
from .test_webtransport_moq import counter_app
from .wt_client import hypercorn_server

pytestmark = pytest.mark.interop

TIMEOUT = 10


async def test_dial_webtransport_subscribes_through_hypercorn(certs: Certs) -> None:
    app, requests = counter_app()
    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port:
        url = f"https://127.0.0.1:{port}/rooms/5?k=v"
        session = await dial_webtransport(url, fingerprint=certs.fingerprint, headers=[("Origin", "https://good.test")])
        async with session:
            assert session.version == LITE_06
            reader = await session.subscribe("demo", "count")
            got = []
            async with asyncio.timeout(TIMEOUT):
                async for group in reader:
                    got.append(await group.read_all())
                    if len(got) == 3:
                        break
        assert all(frames[0].startswith(b"n=") for frames in got)
        [request] = requests
        assert (request.path, request.query, request.origin) == ("/rooms/5", "k=v", "https://good.test")
        assert request.headers["wt-available-protocols"] == '"moq-lite-06", "moq-lite-05", "moq-lite-04", "moq-lite-03", "moql"'


async def test_dial_webtransport_refused_in_http(certs: Certs) -> None:
    app, _ = counter_app()
    async with hypercorn_server(app, str(certs.cert), str(certs.key)) as port:
        with pytest.raises(SetupRejected) as refused:
            await dial_webtransport(f"https://127.0.0.1:{port}/nowhere", fingerprint=certs.fingerprint)
        assert refused.value.code == 404
        with pytest.raises(SetupRejected) as refused:
            await dial_webtransport(f"https://127.0.0.1:{port}/rooms/1", fingerprint=certs.fingerprint,
                                    headers=[("origin", "https://evil.test")])
        assert refused.value.code == 403


async def test_dial_webtransport_against_moqrs_server_both_directions() -> None:
    origin = moq.OriginProducer()
    async with moq.Server("127.0.0.1:0", tls_generate=["localhost"], publish=origin, subscribe=origin) as server:
        accepted = []

        async def accept_all() -> None:
            async for request in server:
                accepted.append(await request.accept())

        acceptor = asyncio.ensure_future(accept_all())
        try:
            port = int(server.local_addr.rsplit(":", 1)[1])
            fingerprint = server.cert_fingerprints()[0]
            rs_broadcast = origin.create_broadcast("rs/clock")
            rs_track = rs_broadcast.publish_track("seconds")
            rs_broadcast.announce()
            mux = TrackMux()
            ours = Broadcast("py/cam")
            our_track = ours.create_track("video")
            mux.publish("py/cam", ours)
            session = await dial_webtransport(f"https://127.0.0.1:{port}/room", fingerprint=fingerprint, mux=mux)
            async with session:
                assert session.version == LITE_06
                reader = await session.subscribe("rs/clock", "seconds")
                consumer = await (await asyncio.wait_for(origin.consume().announced_broadcast("py/cam"), TIMEOUT)
                                  ).subscribe_track("video")

                async def produce() -> None:
                    for g in range(40):
                        group = rs_track.append_group()
                        group.write_frame(f"rs {g}".encode())
                        group.finish()
                        our_track.write_frame(f"py {g}".encode() + bytes(3000))
                        await asyncio.sleep(0.05)

                producer = asyncio.ensure_future(produce())
                got = []
                async with asyncio.timeout(TIMEOUT):
                    async for group in reader:
                        got.append(await group.read_all())
                        if len(got) == 3:
                            break
                    group = await consumer.next_group()
                    frame = await group.read_frame()
                producer.cancel()
            assert all(frames[0].startswith(b"rs ") for frames in got)
            assert bytes(frame.payload).startswith(b"py ") and len(frame.payload) > 3000
        finally:
            acceptor.cancel()

