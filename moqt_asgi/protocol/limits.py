"""Limits on everything whose size or count comes from the network."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what a peer can make a session hold, and on what we send.

    The first group bounds what we *accept*: sizes and counts read from the
    network, checked before anything is allocated. The second bounds work a
    peer can start on our side (streams it opens that we serve). The last
    group shapes what we *send*, so that a legitimate peer with the usual
    limits can read it (a large announce set must not break discovery).

    The defaults suit live media: control messages are small, frames can be a
    keyframe of several megabytes. See ``docs/security.md`` for the whole list.
    """

    max_message_size: int = 64 * 1024
    """Largest control message body (announce, subscribe, setup...)."""
    max_path_length: int = 4096
    """Longest broadcast path, track name or announce prefix, in bytes."""
    max_frame_size: int = 16 * 1024 * 1024
    """Largest frame payload accepted from a peer."""
    max_versions: int = 64
    """Most versions accepted in a client setup."""
    max_parameters: int = 64
    """Most setup parameters accepted."""
    max_stream_buffer: int = 32 * 1024 * 1024
    """Most unread bytes buffered for one incoming stream; beyond it the stream is stopped."""
    max_assembling_bytes: int = 64 * 1024 * 1024
    """Bytes of frames being read at once on one session (their declared sizes): a frame that
    would pass it is refused (its group stopped with ``TOO_LARGE``). One frame is always allowed."""
    max_queued_groups: int = 8
    """Most groups waiting for a subscriber to read them; older ones are dropped."""
    max_announcements: int = 65536
    """Most broadcasts one announce stream of the peer's may report as active."""
    max_announce_init_size: int = 8 * 1024 * 1024
    """Largest ANNOUNCE_INIT (lite-01/02: every active path in one message) we read from a peer."""

    # -- work a peer can start on our side
    max_subscriptions: int = 4096
    """Most concurrent subscriptions a peer may hold on one session."""
    max_announce_streams: int = 16
    """Most announce requests (one per prefix watched) a peer may hold open on one session."""
    max_fetches: int = 8
    """Most FETCH requests served at once on one session; more are refused (``BOUNDS_EXCEEDED``)."""
    fetch_timeout: float = 30.0
    """Seconds a FETCH reply may take to go out; a peer that reads it slower loses it (``TIMEOUT``)."""

    # -- what we send
    max_sent_announce_init: int = 32 * 1024
    """Largest ANNOUNCE_INIT we send (lite-01/02); paths beyond it follow as ANNOUNCE messages."""
    announce_backlog: int = 64 * 1024
    """Unsent bytes an announce stream may have queued before we wait for the peer to read."""


DEFAULT_LIMITS = Limits()
