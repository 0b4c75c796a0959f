"""moq-lite-01 and moq-lite-02.

lite-02 is :class:`~.codec.Codec` itself, the base every other codec refines;
lite-01 differs from it only in SUBSCRIBE_OK, which carries the publisher's
priority byte. Both are negotiated in a SETUP exchange (:mod:`.setup`).
"""

from __future__ import annotations

from typing import ClassVar

from .codec import LITE_02, Codec
from .lite_wire import BidiStreamType, UniStreamType, frame_message

LITE_01 = 0xFF0DAD01


class Lite01Codec(Codec):
    """moq-lite-01: SUBSCRIBE_OK carries the publisher's priority byte."""

    version: ClassVar[int] = LITE_01
    name: ClassVar[str] = "moq-lite-01"
    subscribe_ok_has_priority: ClassVar[bool] = True


__all__ = ["LITE_01", "LITE_02", "BidiStreamType", "Codec", "Lite01Codec", "UniStreamType", "frame_message"]
