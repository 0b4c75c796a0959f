"""moq-lite-04 (ALPN ``moq-lite-04``), bytes verified against moq-rs.

Changes from lite-03:

* ANNOUNCE_PLEASE becomes ANNOUNCE_SUBSCRIBE: ``prefix, exclude_hop`` (the
  subscriber's hop id, 0 for none; the publisher skips routes through it).
* ANNOUNCE carries a hop id list (``count, id...``, at most 32) instead of a
  count. The publisher appends its own id, so a locally published broadcast
  arrives with one hop.
* PROBE gains ``rtt`` (ms, 0 = unknown).
* New GOAWAY stream (0x5): ``uri`` (empty for no redirect).
"""

from __future__ import annotations

from typing import ClassVar

from .lite03 import MAX_URI_LENGTH, Lite03Codec
from .lite_wire import Features, HopEncoding, LiteBidi

LITE_04 = 0xFF0DAD04
ALPN_LITE_04 = "moq-lite-04"


class Lite04Codec(Lite03Codec):
    version = LITE_04
    name = "moq-lite-04"
    alpn: ClassVar[str] = ALPN_LITE_04
    features: ClassVar[Features] = Features(
        version_in_alpn=True,
        session_stream=False,
        announce_init=False,
        hops=HopEncoding.IDS,
        exclude_hop=True,
        typed_subscribe_responses=True,
        subscribe_update=True,
        subscribe_ranges=True,
        fetch=True,
        probe=True,
        probe_rtt=True,
        goaway=True,
        unknown_stream_fatal=False,
    )
    bidi_stream_types: ClassVar[frozenset[LiteBidi]] = frozenset(
        {LiteBidi.ANNOUNCE, LiteBidi.SUBSCRIBE, LiteBidi.FETCH, LiteBidi.PROBE, LiteBidi.GOAWAY}
    )


__all__ = ["ALPN_LITE_04", "LITE_04", "MAX_URI_LENGTH", "Lite04Codec"]
