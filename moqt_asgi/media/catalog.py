"""The hang catalog (``catalog.json``) as typed data.

:class:`Catalog` is the root: a :class:`VideoSection` and an
:class:`AudioSection` whose renditions are keyed by track name, the JSON
data tracks (root ``json.tracks``), and every other root section kept as
it came (``clock``, ``archive``, application sections). Renditions keep
unknown fields in ``extra`` and a container of an unknown kind verbatim, so
a catalog read and written again loses nothing.

:meth:`Catalog.from_json` is as strict as the ``@moq/hang`` player's schema
about the fields it reads (a bad one fails the whole catalog there, so it
raises :class:`CatalogError` here); :meth:`Catalog.validate` checks one
before it is published. Fields are written in moq-rs's order, compactly.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_U53 = 2**53 - 1

Json = Any
"""A decoded JSON value."""


class CatalogError(ValueError):
    """A catalog the hang player would reject."""


def _u53(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise CatalogError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    if not 0 <= value <= MAX_U53:
        raise CatalogError(f"{where} must be within 0..2^53-1, got {value!r}")
    return value


def _opt_u53(data: dict[str, Json], key: str, where: str) -> int | None:
    value = data.get(key)
    return None if value is None else _u53(value, f"{where}.{key}")


def _opt_str(data: dict[str, Json], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise CatalogError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _opt_bool(data: dict[str, Json], key: str, where: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise CatalogError(f"{where}.{key} must be a boolean, got {value!r}")
    return value


def _opt_number(data: dict[str, Json], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(f"{where}.{key} must be a number, got {value!r}")
    return value


def _hex(data: dict[str, Json], key: str, where: str) -> bytes | None:
    value = _opt_str(data, key, where)
    if value is None:
        return None
    if len(value) % 2:
        raise CatalogError(f"{where}.{key} must be hex of even length")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CatalogError(f"{where}.{key} must be hex, got {value[:40]!r}") from None


def _object(value: object, where: str) -> dict[str, Json]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where} must be an object, got {type(value).__name__}")
    return value


@dataclass(slots=True)
class Container:
    """How a rendition's frames are wrapped: ``legacy`` (default), ``cmaf`` (with ``init``), ``loc``, or other.

    An unknown kind is kept with all its fields (``extra``); readers ignore such renditions.
    """

    kind: str = "legacy"
    init: bytes | None = None
    """``cmaf``: the ``ftyp`` + ``moov`` of the track (base64 on the wire)."""
    extra: dict[str, Json] = field(default_factory=dict)

    KNOWN = ("legacy", "cmaf", "loc")

    @property
    def known(self) -> bool:
        return self.kind in self.KNOWN

    @classmethod
    def from_json(cls, value: object, where: str) -> Container:
        data = _object(value, where)
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise CatalogError(f"{where}.kind must be a string")
        if kind == "cmaf":
            init = data.get("init")
            if not isinstance(init, str):
                raise CatalogError(f"{where}: a cmaf container needs init (base64)")
            try:
                return cls("cmaf", base64.b64decode(init, validate=True))
            except binascii.Error:
                raise CatalogError(f"{where}.init is not base64") from None
        if kind in ("legacy", "loc"):
            return cls(kind)
        return cls(kind, None, {k: v for k, v in data.items() if k != "kind"})

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {"kind": self.kind}
        if self.kind == "cmaf":
            out["init"] = base64.b64encode(self.init or b"").decode("ascii")
        out.update(self.extra)
        return out


VIDEO_FIELDS = ("broadcast", "label", "codec", "description", "codedWidth", "codedHeight", "displayAspectWidth",
                "displayAspectHeight", "bitrate", "stalled", "framerate", "optimizeForLatency", "container", "jitter",
                "delay", "timeline")
AUDIO_FIELDS = ("broadcast", "label", "codec", "sampleRate", "numberOfChannels", "bitrate", "description", "container",
                "jitter", "delay", "timeline")


@dataclass(slots=True)
class VideoConfig:
    """One video rendition: a WebCodecs ``VideoDecoderConfig`` plus how its frames are carried."""

    codec: str
    description: bytes | None = None
    coded_width: int | None = None
    coded_height: int | None = None
    display_aspect_width: int | None = None
    display_aspect_height: int | None = None
    bitrate: int | None = None
    framerate: float | None = None
    optimize_for_latency: bool | None = None
    container: Container = field(default_factory=Container)
    jitter: int | None = None
    """Integer milliseconds (a float fails the whole catalog in the player)."""
    broadcast: str | None = None
    label: str | None = None
    stalled: bool | None = None
    delay: int | None = None
    timeline: dict[str, Json] | None = None
    extra: dict[str, Json] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, where: str) -> VideoConfig:
        data = _object(value, where)
        codec = data.get("codec")
        if not isinstance(codec, str):
            raise CatalogError(f"{where}.codec must be a string")
        timeline = data.get("timeline")
        return cls(
            codec=codec, description=_hex(data, "description", where),
            coded_width=_opt_u53(data, "codedWidth", where), coded_height=_opt_u53(data, "codedHeight", where),
            display_aspect_width=_opt_u53(data, "displayAspectWidth", where),
            display_aspect_height=_opt_u53(data, "displayAspectHeight", where),
            bitrate=_opt_u53(data, "bitrate", where), framerate=_opt_number(data, "framerate", where),
            optimize_for_latency=_opt_bool(data, "optimizeForLatency", where),
            container=Container.from_json(data["container"], f"{where}.container") if "container" in data else Container(),
            jitter=_opt_u53(data, "jitter", where), broadcast=_opt_str(data, "broadcast", where),
            label=_opt_str(data, "label", where), stalled=_opt_bool(data, "stalled", where),
            delay=_opt_u53(data, "delay", where),
            timeline=_object(timeline, f"{where}.timeline") if timeline is not None else None,
            extra={k: v for k, v in data.items() if k not in VIDEO_FIELDS})

    def to_json(self) -> dict[str, Json]:
        values: dict[str, Json] = {
            "broadcast": self.broadcast, "label": self.label, "codec": self.codec,
            "description": self.description.hex() if self.description is not None else None,
            "codedWidth": self.coded_width, "codedHeight": self.coded_height,
            "displayAspectWidth": self.display_aspect_width, "displayAspectHeight": self.display_aspect_height,
            "bitrate": self.bitrate, "stalled": self.stalled, "framerate": self.framerate,
            "optimizeForLatency": self.optimize_for_latency, "container": self.container.to_json(),
            "jitter": self.jitter, "delay": self.delay, "timeline": self.timeline}
        out = {k: v for k, v in values.items() if v is not None}
        out.update(self.extra)
        return out


@dataclass(slots=True)
class AudioConfig:
    """One audio rendition: a WebCodecs ``AudioDecoderConfig`` plus how its frames are carried."""

    codec: str
    sample_rate: int
    number_of_channels: int
    bitrate: int | None = None
    description: bytes | None = None
    container: Container = field(default_factory=Container)
    jitter: int | None = None
    broadcast: str | None = None
    label: str | None = None
    delay: int | None = None
    timeline: dict[str, Json] | None = None
    extra: dict[str, Json] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object, where: str) -> AudioConfig:
        data = _object(value, where)
        codec = data.get("codec")
        if not isinstance(codec, str):
            raise CatalogError(f"{where}.codec must be a string")
        for key in ("sampleRate", "numberOfChannels"):
            if key not in data:
                raise CatalogError(f"{where}.{key} is required")
        timeline = data.get("timeline")
        return cls(
            codec=codec, sample_rate=_u53(data["sampleRate"], f"{where}.sampleRate"),
            number_of_channels=_u53(data["numberOfChannels"], f"{where}.numberOfChannels"),
            bitrate=_opt_u53(data, "bitrate", where), description=_hex(data, "description", where),
            container=Container.from_json(data["container"], f"{where}.container") if "container" in data else Container(),
            jitter=_opt_u53(data, "jitter", where), broadcast=_opt_str(data, "broadcast", where),
            label=_opt_str(data, "label", where), delay=_opt_u53(data, "delay", where),
            timeline=_object(timeline, f"{where}.timeline") if timeline is not None else None,
            extra={k: v for k, v in data.items() if k not in AUDIO_FIELDS})

    def to_json(self) -> dict[str, Json]:
        values: dict[str, Json] = {
            "broadcast": self.broadcast, "label": self.label, "codec": self.codec, "sampleRate": self.sample_rate,
            "numberOfChannels": self.number_of_channels, "bitrate": self.bitrate,
            "description": self.description.hex() if self.description is not None else None,
            "container": self.container.to_json(), "jitter": self.jitter, "delay": self.delay,
            "timeline": self.timeline}
        out = {k: v for k, v in values.items() if v is not None}
        out.update(self.extra)
        return out


@dataclass(slots=True)
class VideoSection:
    """``video``: renditions by track name, and how to show them (``display`` size, ``rotation``, ``flip``)."""

    renditions: dict[str, VideoConfig] = field(default_factory=dict)
    display: tuple[int, int] | None = None
    rotation: float | None = None
    flip: bool | None = None
    extra: dict[str, Json] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object) -> VideoSection:
        data = _object(value, "video")
        renditions = _object(data.get("renditions"), "video.renditions")
        display = None
        if (raw := data.get("display")) is not None:
            size = _object(raw, "video.display")
            if "width" not in size or "height" not in size:
                raise CatalogError("video.display needs width and height")
            display = (_u53(size["width"], "video.display.width"), _u53(size["height"], "video.display.height"))
        return cls({name: VideoConfig.from_json(config, f"video.renditions[{name!r}]") for name, config in renditions.items()},
                   display, _opt_number(data, "rotation", "video"), _opt_bool(data, "flip", "video"),
                   {k: v for k, v in data.items() if k not in ("renditions", "display", "rotation", "flip")})

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {"renditions": {name: config.to_json() for name, config in self.renditions.items()}}
        if self.display is not None:
            out["display"] = {"width": self.display[0], "height": self.display[1]}
        if self.rotation is not None:
            out["rotation"] = self.rotation
        if self.flip is not None:
            out["flip"] = self.flip
        out.update(self.extra)
        return out


@dataclass(slots=True)
class AudioSection:
    """``audio``: renditions by track name."""

    renditions: dict[str, AudioConfig] = field(default_factory=dict)
    extra: dict[str, Json] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: object) -> AudioSection:
        data = _object(value, "audio")
        renditions = _object(data.get("renditions"), "audio.renditions")
        return cls({name: AudioConfig.from_json(config, f"audio.renditions[{name!r}]") for name, config in renditions.items()},
                   {k: v for k, v in data.items() if k != "renditions"})

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {"renditions": {name: config.to_json() for name, config in self.renditions.items()}}
        out.update(self.extra)
        return out


JSON_MODES = ("snapshot", "stream", "window")


@dataclass(slots=True)
class JsonTrack:
    """An entry of root ``json.tracks``: a JSON data track's ``mode`` and optional ``compression``/``schema``.

    A track with an unknown ``mode`` or ``compression`` is kept but must be ignored by readers (:attr:`usable`).
    """

    mode: str
    compression: str | None = None
    schema: str | None = None
    extra: dict[str, Json] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.mode in JSON_MODES and self.compression in (None, "deflate")

    @classmethod
    def from_json(cls, value: object, where: str) -> JsonTrack:
        data = _object(value, where)
        mode = data.get("mode")
        if not isinstance(mode, str):
            raise CatalogError(f"{where}.mode must be a string")
        return cls(mode, _opt_str(data, "compression", where), _opt_str(data, "schema", where),
                   {k: v for k, v in data.items() if k not in ("mode", "compression", "schema")})

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {"mode": self.mode}
        if self.compression is not None:
            out["compression"] = self.compression
        if self.schema is not None:
            out["schema"] = self.schema
        out.update(self.extra)
        return out


RESERVED_SECTIONS = frozenset({"video", "audio", "text", "archive", "clock", "json", "binary", "timeline", "version",
                               "generatedAt", "isComplete", "tracks", "initDataList"})
"""Root names an application section must not use (moq-rs refuses them too)."""


@dataclass(slots=True)
class Catalog:
    """A whole hang catalog. ``sections`` holds every other root key as it came (``clock``, application data...)."""

    video: VideoSection | None = None
    audio: AudioSection | None = None
    json_tracks: dict[str, JsonTrack] = field(default_factory=dict)
    sections: dict[str, Json] = field(default_factory=dict)
    json_extra: dict[str, Json] = field(default_factory=dict)
    """Keys of root ``json`` other than ``tracks``."""
    order: list[str] = field(default_factory=list)
    """The root keys in the order they were read, kept when written back (new keys follow)."""

    @classmethod
    def from_json(cls, value: object) -> Catalog:
        """Parse a decoded catalog; raises :class:`CatalogError` where the hang player would fail."""
        data = _object(value, "catalog")
        catalog = cls(VideoSection.from_json(data["video"]) if data.get("video") is not None else None,
                      AudioSection.from_json(data["audio"]) if data.get("audio") is not None else None)
        if (raw := data.get("json")) is not None:
            section = _object(raw, "json")
            tracks = _object(section.get("tracks", {}), "json.tracks")
            catalog.json_tracks = {name: JsonTrack.from_json(entry, f"json.tracks[{name!r}]") for name, entry in tracks.items()}
            catalog.json_extra = {k: v for k, v in section.items() if k != "tracks"}
        catalog.sections = {k: v for k, v in data.items() if k not in ("video", "audio", "json")}
        catalog.order = list(data)
        return catalog

    @classmethod
    def decode(cls, payload: bytes) -> Catalog:
        """Parse ``catalog.json`` bytes (any valid JSON layout)."""
        try:
            return cls.from_json(json.loads(payload))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"catalog is not JSON: {exc}") from None

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {}
        if self.video is not None:
            out["video"] = self.video.to_json()
        if self.audio is not None:
            out["audio"] = self.audio.to_json()
        out.update({k: v for k, v in self.sections.items() if k not in ("video", "audio", "json")})
        if self.json_tracks or self.json_extra:
            out["json"] = {"tracks": {name: self.json_tracks[name].to_json() for name in sorted(self.json_tracks)},
                           **self.json_extra}
        if self.order:
            ordered = {key: out[key] for key in self.order if key in out}
            ordered.update(out)
            return ordered
        return out

    def encode(self) -> bytes:
        """Compact UTF-8 JSON, as moq-rs and the JS publisher write it."""
        return dumps(self.to_json())

    def validate(self) -> None:
        """Raise :class:`CatalogError` if the hang player would reject this catalog (checked by parsing it back)."""
        Catalog.from_json(json.loads(self.encode()))

    def rendition(self, name: str) -> VideoConfig | AudioConfig | None:
        """The video or audio rendition named ``name`` (a track name)."""
        if self.video is not None and name in self.video.renditions:
            return self.video.renditions[name]
        if self.audio is not None and name in self.audio.renditions:
            return self.audio.renditions[name]
        return None


def dumps(value: Json) -> bytes:
    """Compact JSON bytes (no spaces, UTF-8, no trailing newline)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


__all__ = [
    "MAX_U53", "RESERVED_SECTIONS", "AudioConfig", "AudioSection", "Catalog", "CatalogError", "Container", "Json",
    "JsonTrack", "VideoConfig", "VideoSection", "dumps",
]
