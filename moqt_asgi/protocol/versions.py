"""The versions this package speaks and how one is chosen.

A version is a codec class plus a few facts about how a session on it
starts. Adding a version means adding an entry here and a codec module.

* lite-01/02 (and gomoqt's dialect) are negotiated inside a SETUP exchange on
  the first bidi stream (ALPN ``moql``; gomoqt uses ``moq-00`` natively).
* lite-03..06 are chosen by the ALPN (``moq-lite-0N``, or the WebTransport
  protocol of the same name); 05 and 06 then exchange SETUPs on uni streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .gomoqt import ALPN_GOMOQT, GOMOQT_VERSION, GomoqtCodec
from .limits import Limits
from .lite import LITE_01, LITE_02, Codec, Lite01Codec
from .lite03 import ALPN_LITE_03, LITE_03, Lite03Codec
from .lite04 import ALPN_LITE_04, LITE_04, Lite04Codec
from .lite05 import ALPN_LITE_05, LITE_05, Lite05Codec
from .lite06 import ALPN_LITE_06, LITE_06, Lite06Codec
from .lite_wire import LITE_02_FEATURES, Features

ALPN_LITE = "moql"
"""ALPN of moq-lite with the version chosen in a SETUP exchange (lite-01/02)."""
ALPN_MOQT_ALIAS = "moqt"
ALPN_H3 = "h3"


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    name: str
    codec: type[Codec]
    alpn: str | None = None
    """The ALPN (or WebTransport protocol) that selects exactly this version, if any."""
    setup_in_alpn: bool = False
    """The ALPN alone fixes the version: no version negotiation in a SETUP."""
    bidi_setup: bool = True
    """A SETUP exchange on the first bidi stream negotiates the version (lite-01/02, gomoqt)."""
    uni_setup: bool = False
    """Each side sends one SETUP on its own uni stream (lite-05+)."""

    @property
    def has_setup_stream(self) -> bool:
        return self.bidi_setup or self.uni_setup

    def new_codec(self, limits: Limits) -> Codec:
        return self.codec(limits)


LITE_02_VERSION = Version(LITE_02, "moq-lite-02", Codec)
LITE_01_VERSION = Version(LITE_01, "moq-lite-01", Lite01Codec)
LITE_03_VERSION = Version(LITE_03, "moq-lite-03", Lite03Codec, ALPN_LITE_03, setup_in_alpn=True, bidi_setup=False)
LITE_04_VERSION = Version(LITE_04, "moq-lite-04", Lite04Codec, ALPN_LITE_04, setup_in_alpn=True, bidi_setup=False)
LITE_05_VERSION = Version(
    LITE_05, "moq-lite-05", Lite05Codec, ALPN_LITE_05, setup_in_alpn=True, bidi_setup=False, uni_setup=True
)
LITE_06_VERSION = Version(
    LITE_06, "moq-lite-06", Lite06Codec, ALPN_LITE_06, setup_in_alpn=True, bidi_setup=False, uni_setup=True
)
GOMOQT_DIALECT = Version(GOMOQT_VERSION, "gomoqt", GomoqtCodec)
"""gomoqt's dialect: legacy (0x00) SETUP framing only, version 0xfeedbabe."""

SETUP_VERSIONS: tuple[Version, ...] = (LITE_02_VERSION, LITE_01_VERSION)
"""Versions negotiated inside SETUP, newest first (our preference order)."""

ALPN_VERSIONS: tuple[Version, ...] = (LITE_06_VERSION, LITE_05_VERSION, LITE_04_VERSION, LITE_03_VERSION)
"""Versions chosen by ALPN, newest first (the order moq-rs offers them)."""

ALL_VERSIONS: tuple[Version, ...] = (*ALPN_VERSIONS, *SETUP_VERSIONS, GOMOQT_DIALECT)
"""Everything this package speaks, in our order of preference (newest first, the dialect last)."""

DEFAULT_VERSIONS = ALL_VERSIONS
"""What servers and clients offer unless configured otherwise."""

ALPN_TO_VERSION: dict[str, Version] = {v.alpn: v for v in ALPN_VERSIONS if v.alpn is not None}
"""ALPN (or WebTransport protocol) -> the version it selects."""

ALPN_PREFERENCE: tuple[str, ...] = (*ALPN_TO_VERSION, ALPN_LITE)
"""lite ALPNs newest first, ending with ``moql`` (SETUP-negotiated)."""

_BY_NUMBER = {v.number: v for v in SETUP_VERSIONS}
_ALL_BY_NUMBER = {v.number: v for v in ALL_VERSIONS}


def version_by_number(number: int) -> Version | None:
    """A version negotiable in a kixelated SETUP exchange (lite-01/02), by number."""
    return _BY_NUMBER.get(number)


def lookup_version(number: int) -> Version | None:
    """Any version this package knows, by number (lite-01..06, gomoqt)."""
    return _ALL_BY_NUMBER.get(number)


def version_by_alpn(alpn: str | None) -> Version | None:
    """The version a negotiated ALPN (or WebTransport protocol) fixes, or ``None``."""
    return ALPN_TO_VERSION.get(alpn) if alpn else None


def version_name(number: int) -> str:
    version = _ALL_BY_NUMBER.get(number)
    return version.name if version else f"{number:#x}"


def choose_version(offered: Iterable[int], supported: Sequence[Version] = SETUP_VERSIONS) -> Version | None:
    """The newest of ``supported`` that the peer ``offered``, or ``None``."""
    offered_set = set(offered)
    for version in supported:
        if version.number in offered_set:
            return version
    return None


def choose_alpn(offered: Iterable[str], supported: Sequence[str] = ALPN_PREFERENCE) -> str | None:
    """The first of ``supported`` (our preference) that the peer offered."""
    offered_set = set(offered)
    for alpn in supported:
        if alpn in offered_set:
            return alpn
    return None


def ordered(versions: Iterable[Version]) -> tuple[Version, ...]:
    """``versions`` in our order of preference, duplicates dropped."""
    wanted = set(versions)
    unknown = wanted - set(ALL_VERSIONS)
    if unknown:
        raise ValueError(f"unknown versions: {sorted(v.name for v in unknown)}")
    return tuple(v for v in ALL_VERSIONS if v in wanted)


def protocols_for(versions: Iterable[Version]) -> tuple[str, ...]:
    """The ALPNs / WebTransport protocols that reach ``versions``, preferred first.

    ``moql`` stands for every SETUP-negotiated lite version; gomoqt's native
    ``moq-00`` is added by :func:`native_alpns` only (over WebTransport
    gomoqt sends no protocol list and is recognised by its SETUP).
    """
    chosen = ordered(versions)
    out = [v.alpn for v in chosen if v.alpn is not None]
    if any(v in SETUP_VERSIONS for v in chosen):
        out.append(ALPN_LITE)
    return tuple(out)


def native_alpns(versions: Iterable[Version]) -> tuple[str, ...]:
    """The ALPNs a native QUIC endpoint offers for ``versions``."""
    chosen = ordered(versions)
    return (*protocols_for(chosen), *((ALPN_GOMOQT,) if GOMOQT_DIALECT in chosen else ()))


def setup_versions(versions: Iterable[Version]) -> tuple[Version, ...]:
    """Of ``versions``, those negotiated inside a SETUP exchange (lite-01/02, gomoqt)."""
    return tuple(v for v in ordered(versions) if v.bidi_setup)


def features_of(codec: Codec | type[Codec]) -> Features:
    """What a codec's version has; lite-01/02 codecs predate the ``features`` attribute."""
    features = getattr(codec, "features", None)
    return features if isinstance(features, Features) else LITE_02_FEATURES


__all__ = [
    "ALL_VERSIONS",
    "DEFAULT_VERSIONS",
    "ALPN_GOMOQT",
    "ALPN_H3",
    "ALPN_LITE",
    "ALPN_MOQT_ALIAS",
    "ALPN_PREFERENCE",
    "ALPN_TO_VERSION",
    "ALPN_VERSIONS",
    "GOMOQT_DIALECT",
    "LITE_01_VERSION",
    "LITE_02_VERSION",
    "LITE_03_VERSION",
    "LITE_04_VERSION",
    "LITE_05_VERSION",
    "LITE_06_VERSION",
    "SETUP_VERSIONS",
    "Version",
    "choose_alpn",
    "choose_version",
    "features_of",
    "lookup_version",
    "native_alpns",
    "ordered",
    "protocols_for",
    "setup_versions",
    "version_by_alpn",
    "version_by_number",
    "version_name",
]
