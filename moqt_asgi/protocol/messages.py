"""Control messages as plain values, independent of any wire version."""

from __future__ import annotations

from dataclasses import dataclass, field

Parameters = dict[int, "int | bytes"]


@dataclass(frozen=True, slots=True)
class ClientSetup:
    versions: tuple[int, ...]
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerSetup:
    version: int
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    bitrate: int


@dataclass(frozen=True, slots=True)
class AnnouncePlease:
    prefix: str


@dataclass(frozen=True, slots=True)
class AnnounceInit:
    suffixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    active: bool
    suffix: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscribe_id: int
    broadcast: str
    track: str
    priority: int


@dataclass(frozen=True, slots=True)
class SubscribeOk:
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeUpdate:
    priority: int


@dataclass(frozen=True, slots=True)
class GroupHeader:
    subscribe_id: int
    sequence: int


ControlMessage = (
    AnnouncePlease | AnnounceInit | Announce | Subscribe | SubscribeOk | SubscribeUpdate | SessionInfo
)
