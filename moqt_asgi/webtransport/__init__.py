"""WebTransport over HTTP/3: sessions, the ASGI ``webtransport`` scope, and two servers for it.

``QuicServer`` (``python -m moqt_asgi serve``) serves HTTP/3 itself, beside
native QUIC on the same port (:class:`H3ServerConnection`). ``import
moqt_asgi`` also calls :func:`install`, which patches stock Hypercorn
(``hypercorn app:moq --quic-bind ...``) so that WebTransport CONNECTs reach
the application as ``webtransport`` scopes there too. Both servers and the
client route HTTP/3 events to their sessions with one
:class:`WebTransportRouter`. See ``docs/asgi-webtransport.md``.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings

from .asgi import WebTransportASGI, build_scope
from .capsules import app_to_http, http_to_app
from .h3_server import H3ServerConnection
from .router import RouterHost, WebTransportRouter
from .session import SessionHost, WebTransportSession, WebTransportStream

logger = logging.getLogger("moqt_asgi.webtransport")

_error: str | None = None


def _hypercorn_installed() -> bool:
    try:
        return importlib.util.find_spec("hypercorn") is not None
    except (ImportError, ValueError):  # blocked, or a module without a spec
        return False


def install(*, force: bool = False) -> bool:
    """Patch Hypercorn's HTTP/3 stack for WebTransport (idempotent).

    Returns True when the patch is in place. If the installed Hypercorn or
    aioquic is not a supported version (or their internals moved), nothing
    is patched: a :class:`RuntimeWarning` says why, :func:`install_error`
    keeps the reason, and Hypercorn keeps serving plain HTTP/3. ``force``
    patches despite a version mismatch as long as every name is present.
    """
    global _error
    if not _hypercorn_installed():  # the [hypercorn] extra is not installed: nothing to patch
        _error = "Hypercorn is not installed (pip install 'moqt-asgi[hypercorn]')"
        logger.debug("%s", _error)
        return False
    try:
        from . import hypercorn as hypercorn_patch

        hypercorn_patch.apply(force=force)
    except ImportError as exc:
        _error = f"WebTransport through Hypercorn is unavailable: {exc}"
    except Exception as exc:  # IncompatibleHypercorn, or internals that moved in an unexpected way
        _error = f"WebTransport through Hypercorn is disabled: {exc}"
    else:
        _error = None
        return True
    logger.error("%s", _error)
    warnings.warn(_error, RuntimeWarning, stacklevel=2)
    return False


def install_error() -> str | None:
    """Why :func:`install` did not patch Hypercorn (None if it did, or was never called)."""
    return _error


__all__ = [
    "H3ServerConnection",
    "RouterHost",
    "SessionHost",
    "WebTransportASGI",
    "WebTransportRouter",
    "WebTransportSession",
    "WebTransportStream",
    "app_to_http",
    "build_scope",
    "http_to_app",
    "install",
    "install_error",
]
