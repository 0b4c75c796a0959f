"""Streams that arrive before the CONNECT of the session they name.

QUIC does not order streams, so a WebTransport stream can beat its session's
CONNECT request. Such data is held here, bounded in streams and bytes, until
the CONNECT arrives (:meth:`EarlyStreams.take`), turns out to be a plain
request, or the stream is reset (:meth:`EarlyStreams.drop`). Used by both
HTTP/3 entrypoints: the Hypercorn hook and the native h3 server.
"""

from __future__ import annotations

Chunk = tuple[int, bytes, bool]
"""``(stream_id, data, ended)`` as received."""


class EarlyStreams:
    def __init__(self, max_streams: int, max_bytes: int) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self._chunks: dict[int, list[Chunk]] = {}  # by session id
        self._session_of: dict[int, int] = {}  # stream id -> session id
        self._bytes = 0

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._session_of

    @property
    def buffered(self) -> int:
        return self._bytes

    def hold(self, session_id: int, stream_id: int, data: bytes, ended: bool) -> bool:
        """Keep this data; ``False`` means over a limit: the caller refuses the stream."""
        if stream_id not in self._session_of:
            if len(self._session_of) >= self.max_streams:
                return False
            self._session_of[stream_id] = session_id
        if self._bytes + len(data) > self.max_bytes:
            self.drop(stream_id)
            return False
        self._bytes += len(data)
        self._chunks.setdefault(session_id, []).append((stream_id, data, ended))
        return True

    def drop(self, stream_id: int) -> None:
        """Forget one held stream (it was reset, or went over a limit)."""
        session_id = self._session_of.pop(stream_id, None)
        if session_id is None:
            return
        chunks = self._chunks.pop(session_id, [])
        kept = [chunk for chunk in chunks if chunk[0] != stream_id]
        self._bytes -= sum(len(chunk[1]) for chunk in chunks if chunk[0] == stream_id)
        if kept:
            self._chunks[session_id] = kept

    def take(self, session_id: int) -> list[Chunk]:
        """Everything held for ``session_id``, in arrival order, forgotten here."""
        chunks = self._chunks.pop(session_id, [])
        for stream_id, data, _ in chunks:
            self._session_of.pop(stream_id, None)
            self._bytes -= len(data)
        return chunks

    def take_stream_ids(self, session_id: int) -> set[int]:
        """The held streams of ``session_id`` (to refuse them), forgotten here."""
        return {stream_id for stream_id, _, _ in self.take(session_id)}

    def clear(self) -> None:
        self._chunks.clear()
        self._session_of.clear()
        self._bytes = 0
