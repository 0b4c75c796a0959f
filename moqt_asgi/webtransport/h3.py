"""aioquic's HTTP/3 connection with WebTransport enabled and two stream-state fixes.

Used on both sides: Hypercorn's server connections (hook H1) and our client.
"""

from __future__ import annotations

from aioquic.h3.connection import FrameType, H3Connection, H3Stream
from aioquic.quic.connection import QuicConnection


class WebTransportH3Connection(H3Connection):
    """``H3Connection(enable_webtransport=True)`` that also tracks bidi WebTransport streams we open."""

    def __init__(self, quic: QuicConnection, enable_webtransport: bool = True) -> None:
        super().__init__(quic, enable_webtransport=True)

    def create_webtransport_stream(self, session_id: int, is_unidirectional: bool = False) -> int:
        stream_id: int = super().create_webtransport_stream(session_id, is_unidirectional)
        if not is_unidirectional:
            # aioquic only marks bidi WebTransport streams it *receives*; without this the
            # peer's reply would be parsed as HTTP/3 frames and kill the connection.
            stream = H3Stream(stream_id)
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = session_id
            self._stream[stream_id] = stream
        return stream_id

    def finish_webtransport_sending(self, stream_id: int) -> None:
        """Our half of a bidi WebTransport stream ended: free its state once both halves did."""
        stream = self._stream.get(stream_id)
        if stream is not None:
            stream.sending_ended = True
            if stream.is_ended():
                del self._stream[stream_id]


__all__ = ["WebTransportH3Connection"]
