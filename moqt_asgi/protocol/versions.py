"""The versions this package speaks and how one is chosen.

A version is a codec class (:mod:`.codec`): its number, name, ALPN and
:class:`~.lite_wire.Features` are attributes of that class, and
:class:`Version` only reads them. Adding a version means adding a codec class
and an entry in the tables here.

* lite-01/02 (and gomoqt's dialect) are negotiated inside a SETUP exchange on
  the first bidi stream (ALPN ``moql``; gomoqt uses ``moq-00`` natively).
* lite-03..06 are chosen by the ALPN (``moq-lite-0N``, or the WebTransport
  protocol of the same name); 05 and 06 then exchange SETUPs on uni streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .codec import Codec
from .gomoqt import ALPN_GOMOQT, GomoqtCodec
from .limits import Limits
from .lite import Lite01Codec
from .lite03 import Lite03Codec
from .lite04 import Lite04Codec
from .lite05 import Lite05Codec
from .lite06 import Lite06Codec
from .lite_wire import Features

ALPN_LITE = "moql"
"""ALPN of moq-lite with the version chosen in a SETUP exchange (lite-01/02)."""
ALPN_MOQT_ALIAS = "moqt"
ALPN_H3 = "h3"


@dataclass(frozen=True, slots=True, repr=False)
class Version:
    """One version this package speaks: a codec class, and what follows from it.

    Every property reads the codec class, which holds the one copy of each
    fact; two ``Version`` values of one codec class are equal. Use
    :meth:`of` (or the module's constants) rather than the constructor.
    """

    codec: type[Codec]

    @classmethod
    def of(cls, codec: type[Codec]) -> Version:
        """The version ``codec`` speaks (the registered constant, if it is one of ours)."""
        return _BY_CODEC.get(codec) or cls(codec)

    def __repr__(self) -> str:
        return f"Version({self.name!r})"

    @property
    def number(self) -> int:
        """The version number, as offered in a SETUP exchange."""
        return self.codec.version

    @property
    def name(self) -> str:
        return self.codec.name

    @property
    def alpn(self) -> str | None:
        """The ALPN (or WebTransport protocol) that selects exactly this version, if any."""
        return self.codec.alpn

    @property
    def features(self) -> Features:
        return self.codec.features

    @property
    def setup_in_alpn(self) -> bool:
        """The ALPN alone fixes the version: no version negotiation in a SETUP."""
        return self.codec.alpn is not None

    @property
    def bidi_setup(self) -> bool:
        """A SETUP exchange on the first bidi stream negotiates the version (lite-01/02, gomoqt)."""
        return self.codec.features.session_stream

    @property
    def uni_setup(self) -> bool:
        """Each side sends one SETUP on its own uni stream (lite-05+)."""
        return self.codec.features.setup_stream

    @property
    def has_setup_stream(self) -> bool:
        return self.bidi_setup or self.uni_setup

    def new_codec(self, limits: Limits) -> Codec:
        return self.codec(limits)


LITE_02_VERSION = Version(Codec)
LITE_01_VERSION = Version(Lite01Codec)
LITE_03_VERSION = Version(Lite03Codec)
LITE_04_VERSION = Version(Lite04Codec)
LITE_05_VERSION = Version(Lite05Codec)
LITE_06_VERSION = Version(Lite06Codec)
GOMOQT_DIALECT = Version(GomoqtCodec)
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
_BY_NAME = {v.name: v for v in ALL_VERSIONS}
_BY_CODEC = {v.codec: v for v in ALL_VERSIONS}


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
    """The name of version ``number`` (``"moq-lite-06"``), or the number in hex for one we do not know."""
    version = _ALL_BY_NUMBER.get(number)
    return version.name if version else f"{number:#x}"


def version_named(name: str) -> Version:
    """The version called ``name`` (``"moq-lite-06"``, ``"gomoqt"``); ``ValueError`` names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown version {name!r}; known versions: {', '.join(_BY_NAME)}") from None


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


def ordered(versions: Iterable[Version | str]) -> tuple[Version, ...]:
    """``versions`` (or their names, ``"moq-lite-06"``) in our order of preference, duplicates dropped.

    A single name stands for itself, not for its characters. An unknown name or
    version raises ``ValueError``.
    """
    if isinstance(versions, str):
        versions = (versions,)
    wanted = {version_named(v) if isinstance(v, str) else v for v in versions}
    unknown = wanted - set(ALL_VERSIONS)
    if unknown:
        raise ValueError(f"unknown versions: {sorted(v.name for v in unknown)}")
    return tuple(v for v in ALL_VERSIONS if v in wanted)


def protocols_for(versions: Iterable[Version | str]) -> tuple[str, ...]:
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


def native_alpns(versions: Iterable[Version | str]) -> tuple[str, ...]:
    """The ALPNs a native QUIC endpoint offers for ``versions``."""
    chosen = ordered(versions)
    return (*protocols_for(chosen), *((ALPN_GOMOQT,) if GOMOQT_DIALECT in chosen else ()))


def setup_versions(versions: Iterable[Version | str]) -> tuple[Version, ...]:
    """Of ``versions``, those negotiated inside a SETUP exchange (lite-01/02, gomoqt)."""
    return tuple(v for v in ordered(versions) if v.bidi_setup)


def features_of(codec: Codec | type[Codec]) -> Features:
    """What a codec's version has: ``codec.features``."""
    return codec.features


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
    "version_named",
]
