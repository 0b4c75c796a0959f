"""A relay: sessions publish and subscribe, with moq-relay's token rules when configured.

The relay asks every peer what it announces and offers it to everyone; the
first subscriber to a track opens one upstream subscription that is fanned
out to all subscribers. When the publisher leaves, subscribers see the track
end and the announcement go.

Access, like moq-relay's ``--auth-key`` and ``--auth-public``:

* ``MOQ_AUTH_KEY``: a JWK file (or a directory of ``{kid}.jwk`` files). Each
  session then needs a token in its URL, ``?jwt=...``, whose ``root``,
  ``put`` and ``get`` claims say where it may publish and read.
* ``MOQ_AUTH_PUBLIC``: a prefix anyone may use without a token (``anon``).

With neither set, the relay is open: anyone may publish and read anything
(a second publisher of a path serves new subscribers, and the first comes
back when it leaves). Do not put an open relay on the internet.

    MOQ_AUTH_KEY=root.jwk MOQ_AUTH_PUBLIC=anon python -m moqt_asgi serve examples.relay:moq \\
        --bind 127.0.0.1:4443 --certfile certs/cert.pem --keyfile certs/key.pem

A leaf of a cluster. With ``MOQ_UPSTREAM`` set to a node's URL (a moq-relay
node, a moq-rs server, or another of these relays; ``moql://``, ``https://``
or ``ws://``), the relay keeps a session to that node from startup to
shutdown, redialling with moq-relay's backoff (1 s doubling to 10 s,
jittered) whenever it ends: the relay's broadcasts are announced to the
node, and the node's (the whole cluster's) can be played here.

* ``MOQ_UPSTREAM_TOKEN``: the node's token, sent as ``?jwt=`` (for a
  moq-relay node: ``root ""``, ``put [""]``, ``get [""]``, with an ``exp``);
  or ``MOQ_UPSTREAM_TOKEN_FILE``: a file holding it, read before each dial.
* ``MOQ_UPSTREAM_PREFIX``: take only the node's broadcasts under this prefix
  (``live`` leaves out a moq-relay cluster's ``.internal/`` and ``.stats/``).
* ``MOQ_UPSTREAM_CAFILE`` or ``MOQ_UPSTREAM_FINGERPRINT``: how the node's
  certificate is checked (default: the system's CA roots).

    MOQ_UPSTREAM=https://node-a.example:4443/ MOQ_UPSTREAM_TOKEN_FILE=cluster.jwt MOQ_UPSTREAM_PREFIX=live \\
        python -m moqt_asgi serve examples.relay:moq --bind 0.0.0.0:4443 \\
        --certfile certs/cert.pem --keyfile certs/key.pem

The link's state is ``upstream.status()`` (connected or not, attempts,
last error, current delay); its log is ``moqt_asgi.upstream``.
"""

from __future__ import annotations

from moqt_asgi import MoQ
from moqt_asgi.auth.tokens import Authenticator
from moqt_asgi.relay import Relay, UpstreamLink

relay = Relay()
upstream = UpstreamLink.from_env(relay)
"""The link to ``MOQ_UPSTREAM``, or ``None`` when this relay stands alone."""


async def _start_upstream() -> None:
    if upstream is not None:
        upstream.start()


async def _stop_upstream() -> None:
    if upstream is not None:
        await upstream.close()


moq = MoQ(mux=relay.mux, auth=Authenticator.from_env(), on_startup=[_start_upstream], on_shutdown=[_stop_upstream])
moq.add_route("/{path:path}", relay)
if upstream is not None:
    moq.metrics.watch_upstream(upstream)  # moqt_upstream_connected / _attempts / _reconnects on /metrics
