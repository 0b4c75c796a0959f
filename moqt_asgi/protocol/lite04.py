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

from dataclasses import replace
from typing import ClassVar

from .lite03 import MAX_URI_LENGTH, Lite03Codec
from .lite_wire import Features, HopEncoding

LITE_04 = 0xFF0DAD04
ALPN_LITE_04 = "moq-lite-04"


class Lite04Codec(Lite03Codec):
    version: ClassVar[int] = LITE_04
    name: ClassVar[str] = "moq-lite-04"
    alpn: ClassVar[str | None] = ALPN_LITE_04
    features: ClassVar[Features] = replace(
        Lite03Codec.features, hops=HopEncoding.IDS, exclude_hop=True, probe_rtt=True, goaway=True
    )


__all__ = ["ALPN_LITE_04", "LITE_04", "MAX_URI_LENGTH", "Lite04Codec"]
