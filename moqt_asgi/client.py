"""One client entry point for every transport: ``dial(url)`` → a running MoQ :class:`Session`.

``moql://`` and ``moqt://`` dial native QUIC (:func:`~moqt_asgi.native.dial_quic`);
``https://`` dials WebTransport over HTTP/3
(:func:`~moqt_asgi.webtransport.client.dial_webtransport`). Both take the
same TLS options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .mux import TrackMux
from .native import NATIVE_SCHEMES, QuicSettings, dial_quic, parse_url
from .protocol.errors import MoQError
from .protocol.limits import DEFAULT_LIMITS, Limits
from .protocol.versions import DEFAULT_VERSIONS, Version
from .session import Session
from .webtransport.client import dial_webtransport

logger = logging.getLogger("moqt_asgi.client")

SCHEMES = (*NATIVE_SCHEMES, "https")


async def dial(url: str, *, mux: TrackMux | None = None, fingerprint: str | None = None, insecure: bool = False,
               cafile: str | None = None, quic: QuicSettings | None = None, limits: Limits = DEFAULT_LIMITS,
               setup_timeout: float = 10.0, versions: Sequence[Version] = DEFAULT_VERSIONS,
               headers: Sequence[tuple[str, str]] = (), log: logging.Logger = logger) -> Session:
    """Connect to ``url`` and set up a MoQ session (already running).

    * ``moql://host:port/path`` or ``moqt://...``: native QUIC; the ALPN list
      offers each of ``versions`` (``moq-lite-06`` … ``-03``, ``moql`` for
      lite-02/01, ``moq-00`` for gomoqt's dialect) and the server picks.
    * ``https://host:port/path?query``: WebTransport (extended CONNECT on
      HTTP/3); a refusal in HTTP raises :class:`~moqt_asgi.SetupRejected`
      with the status as its ``code``. The versions go in the
      ``wt-available-protocols`` header; the server's ``wt-protocol`` picks.

    The port is required (a URL without one raises :class:`MoQError` at
    once). The server certificate is checked against ``fingerprint``
    (SHA-256 hex), ``cafile``, or the system roots, unless ``insecure``.
    ``headers`` go on the WebTransport CONNECT (``origin``, for instance);
    native QUIC has no headers, so passing some with a ``moql://`` URL is
    an error.
    """
    scheme, _, _, _ = parse_url(url)
    if scheme == "https":
        return await dial_webtransport(url, mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile,
                                       quic=quic, limits=limits, setup_timeout=setup_timeout, versions=versions,
                                       headers=headers, log=log)
    if headers:
        raise MoQError(f"{scheme}:// has no HTTP headers to send; use an https:// URL for WebTransport")
    return await dial_quic(url, mux=mux, fingerprint=fingerprint, insecure=insecure, cafile=cafile, quic=quic,
                           limits=limits, setup_timeout=setup_timeout, versions=versions, log=log)


__all__ = ["SCHEMES", "dial"]
