"""A relay: any session may publish and subscribe.

The relay asks every peer what it announces and offers it to everyone; the
first subscriber to a track opens one upstream subscription that is fanned
out to all subscribers. When the publisher leaves, subscribers see the track
end and the announcement go.

    python -m moqt_asgi serve examples.relay:moq --bind 127.0.0.1:4443 \\
        --certfile certs/cert.pem --keyfile certs/key.pem
"""

from __future__ import annotations

from moqt_asgi import MoQ
from moqt_asgi.relay import Relay

relay = Relay()
moq = MoQ(mux=relay.mux)
moq.add_route("/{path:path}", relay)
