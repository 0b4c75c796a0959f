"""Limits on everything whose size or count comes from the network."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds applied while decoding and buffering peer input.

    The defaults suit live media: control messages are small, frames can be a
    keyframe of several megabytes.
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
    max_queued_groups: int = 8
    """Most groups waiting for a subscriber to read them; older ones are dropped."""
    max_announcements: int = 65536
    """Most broadcasts one announce stream may report as active."""
    max_subscriptions: int = 4096
    """Most concurrent subscriptions a peer may hold on one session."""


DEFAULT_LIMITS = Limits()
