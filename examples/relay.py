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
"""

from __future__ import annotations

from moqt_asgi import MoQ
from moqt_asgi.auth.tokens import Authenticator
from moqt_asgi.relay import Relay

relay = Relay()
moq = MoQ(mux=relay.mux, auth=Authenticator.from_env())
moq.add_route("/{path:path}", relay)
