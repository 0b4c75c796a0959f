"""Native QUIC endpoints and what they need: the server (:mod:`.quic_server`), the dialers
(:mod:`.dial_quic`, :mod:`.dial_webtransport`), settings (:mod:`.settings`), TLS (:mod:`.tls`),
session tickets (:mod:`.tickets`) and development certificates (:mod:`.certs`)."""
