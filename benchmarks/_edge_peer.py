"""One edge of a Rust edge tier in front of a moqt-asgi origin, built from moq-rs (the ``moq-rs`` package).

moq-relay, moq-dev's Rust relay, joins a cluster by dialing each peer named
in ``[cluster] connect`` with one moq-native client that carries the relay's
single origin in both directions, and serves its viewers from that same
origin. The ``moq-rs`` package runs the same Rust core, so an edge here is:

* one ``moq.OriginProducer``, the edge's cache of broadcasts;
* a ``moq.Client`` to the origin's URL (with ``?jwt=`` the cluster token, as
  moq-relay appends ``[cluster] token``), publishing and consuming that
  origin, and reconnecting with backoff: the edge learns the origin's
  announcements over it and subscribes upstream once per track a viewer
  watches;
* a ``moq.Server`` on its own port that serves the origin's broadcasts to
  viewers. Viewers only read (as with a moq-relay viewer token granting
  ``get`` alone); they are not authenticated here (moq-relay checks them
  with its ``[auth] key``).

:class:`Edge` is an async context manager for a test's own event loop; as a
process (:mod:`benchmarks.edges` runs three)::

    python -m benchmarks._edge_peer UPSTREAM_URL --fingerprint HEX --token-file FILE \\
        --bind 127.0.0.1:0 --certfile cert.pem --keyfile key.pem

prints ``listening HOST:PORT`` once connected upstream and serving, then
runs until stdin closes (status 0) or it is terminated. An origin that
cannot be reached, or that refuses the session (no token, a bad one: on
native QUIC the refusal comes right after the session is set up), ends the
process with status 1 and the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from types import TracebackType

import moq

logger = logging.getLogger("moqt_asgi.edges")

CONNECT_TIMEOUT = 30.0
"""Seconds the first dial to the origin has."""


def with_token(url: str, token: str | None) -> str:
    """``url`` with ``jwt=token`` added to its query (unchanged without a token), as moq-relay's cluster dial does."""
    if not token:
        return url
    return f"{url}{'&' if '?' in url else '?'}jwt={token}"


class Edge:
    """A moq-rs edge: one origin, fed by a client of the upstream and served to viewers by a server.

    ``upstream`` is the origin's URL (``moql://`` or ``https://``), trusted by
    ``fingerprint`` (or by the system roots without it); ``token`` is added as
    ``?jwt=``. The viewers' listener binds ``bind`` with ``certfile``/``keyfile``,
    or with a generated certificate for ``localhost`` without them.
    Entering connects upstream first, then starts the listener. An origin
    that refuses the session (no token, a bad one) does so right after it is
    set up on native QUIC: moq-rs raises that from entering without
    ``reconnect``, and from :meth:`closed` with it.
    """

    def __init__(self, upstream: str, *, fingerprint: str | None = None, token: str | None = None,
                 bind: str = "127.0.0.1:0", certfile: str | None = None, keyfile: str | None = None,
                 reconnect: bool = True) -> None:
        self.upstream = with_token(upstream, token)
        self.fingerprint = fingerprint
        self.bind = bind
        self.certfile = certfile
        self.keyfile = keyfile
        self.reconnect = reconnect
        self.origin = moq.OriginProducer()
        """The edge's broadcasts: what it learned from the origin, and the copies of the tracks its viewers read."""
        self._client: moq.Client | None = None
        self._server: moq.Server | None = None
        self._fingerprint: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._serving: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the viewers' listener."""
        if self._server is None:
            raise RuntimeError("the edge is not running")
        return self._server.local_addr

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def viewer_fingerprint(self) -> str:
        """SHA-256 of the viewers' listener's certificate, hex."""
        if self._fingerprint is None:
            raise RuntimeError("the edge is not running")
        return self._fingerprint

    def url(self, scheme: str = "moql", path: str = "/") -> str:
        """A viewer's URL of this edge."""
        host, port = self.address.rsplit(":", 1)
        return f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}{path}"

    async def __aenter__(self) -> Edge:
        stack = contextlib.AsyncExitStack()
        try:
            client = moq.Client(self.upstream, tls_fingerprints=[self.fingerprint] if self.fingerprint else None,
                                reconnect=self.reconnect, websocket_enabled=False, publish=self.origin,
                                subscribe=self.origin)
            await asyncio.wait_for(stack.enter_async_context(client), CONNECT_TIMEOUT)
            self._client = client
            own = bool(self.certfile and self.keyfile)
            server = moq.Server(self.bind, tls_cert=[self.certfile or ""] if own else (),
                                tls_key=[self.keyfile or ""] if own else (), tls_generate=() if own else ["localhost"],
                                publish=self.origin)
            await stack.enter_async_context(server)
            self._server = server
            self._fingerprint = server.cert_fingerprints()[0]  # asked before accepting: moq-rs is busy after
        except BaseException:
            await stack.aclose()
            self._client = self._server = None
            raise
        self._stack = stack
        self._serving = asyncio.ensure_future(self._accept(server))
        logger.info("edge of %s serving viewers on %s", self.upstream.split("?", 1)[0], self.address)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def _accept(self, server: moq.Server) -> None:
        async for request in server:
            task = asyncio.ensure_future(self._hold(request))
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def _hold(self, request: moq.server.Request) -> None:
        """Accept a viewer and keep its session referenced until it ends (moq-rs closes a dropped one)."""
        try:
            session = await request.accept()
            await session.closed()
        except Exception as exc:  # a viewer that went away: nothing for the edge to do
            logger.debug("viewer session ended: %r", exc)

    async def closed(self) -> None:
        """Wait until the upstream session is over for good (refused, or given up without ``reconnect``)."""
        if self._client is None or self._client.session is None:
            return
        await self._client.session.closed()

    async def close(self) -> None:
        """Stop serving viewers and leave the origin."""
        tasks = [task for task in (self._serving, *self._sessions) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._serving = None
        stack, self._stack = self._stack, None
        self._client = self._server = None
        if stack is not None:
            await stack.aclose()  # the listener first, then the upstream client


async def stdin_closed() -> None:
    """Return once stdin reaches its end (never, if stdin cannot be watched, e.g. a regular file)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        await asyncio.Event().wait()
    while await reader.read(65536):
        pass


async def run(args: argparse.Namespace, token: str | None) -> int:
    """Serve until stdin closes (status 0) or the origin ends the upstream session for good (status 1)."""
    try:
        edge = Edge(args.upstream, fingerprint=args.fingerprint, token=token, bind=args.bind,
                    certfile=args.certfile, keyfile=args.keyfile)
        await edge.__aenter__()
    except Exception as exc:
        why = "refused the edge (unauthorized)" if moq.is_auth(exc) else "could not be reached"
        print(f"the origin {why}: {exc!r}", file=sys.stderr)
        return 1
    try:
        print(f"listening {edge.address}", flush=True)
        watched = {asyncio.ensure_future(stdin_closed()), upstream := asyncio.ensure_future(edge.closed())}
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in watched:
            task.cancel()
        if upstream in done and not upstream.cancelled() and (error := upstream.exception()) is not None:
            why = "refused the edge (unauthorized)" if moq.is_auth(error) else "ended the upstream session"
            print(f"the origin {why}: {error!r}", file=sys.stderr)
            return 1
        return 0
    finally:
        await edge.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._edge_peer", description=__doc__.split("\n")[0])
    parser.add_argument("upstream", help="the origin's URL, e.g. moql://127.0.0.1:4443/")
    parser.add_argument("--fingerprint", help="SHA-256 of the origin's certificate, hex (default: system roots)")
    parser.add_argument("--token-file", help="a file holding the cluster token, sent as ?jwt=")
    parser.add_argument("--bind", default="127.0.0.1:0", help="the viewers' listener, HOST:PORT")
    parser.add_argument("--certfile", help="the viewers' listener's certificate (default: generated)")
    parser.add_argument("--keyfile")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s edge[{os.getpid()}] %(message)s")
    status = 0
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        status = asyncio.run(run(args, Path(args.token_file).read_text().strip() if args.token_file else None))
    sys.exit(status)


if __name__ == "__main__":
    main()
