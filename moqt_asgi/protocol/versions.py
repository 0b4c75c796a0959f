"""The versions this package speaks and how one is chosen.

A version is a codec class plus a few facts about how a session on it
starts. Adding a version means adding an entry here and a codec module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .limits import Limits
from .lite import LITE_01, LITE_02, Codec, Lite01Codec

ALPN_LITE = "moql"
"""ALPN of moq-lite with the version chosen in a SETUP exchange (lite-01/02)."""
ALPN_MOQT_ALIAS = "moqt"
ALPN_H3 = "h3"


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    name: str
    codec: type[Codec]

    def new_codec(self, limits: Limits) -> Codec:
        return self.codec(limits)


LITE_02_VERSION = Version(LITE_02, "moq-lite-02", Codec)
LITE_01_VERSION = Version(LITE_01, "moq-lite-01", Lite01Codec)

SETUP_VERSIONS: tuple[Version, ...] = (LITE_02_VERSION, LITE_01_VERSION)
"""Versions negotiated inside SETUP, newest first (our preference order)."""

_BY_NUMBER = {v.number: v for v in SETUP_VERSIONS}


def version_by_number(number: int) -> Version | None:
    return _BY_NUMBER.get(number)


def version_name(number: int) -> str:
    version = _BY_NUMBER.get(number)
    return version.name if version else f"{number:#x}"


def choose_version(offered: Iterable[int], supported: Sequence[Version] = SETUP_VERSIONS) -> Version | None:
    """The newest of ``supported`` that the peer ``offered``, or ``None``."""
    offered_set = set(offered)
    for version in supported:
        if version.number in offered_set:
            return version
    return None
