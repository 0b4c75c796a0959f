"""Control messages as plain values, independent of any wire version.

Fields that only some versions carry have defaults, so a message built for
lite-01/02 is also a valid lite-03..06 message and a codec simply leaves out
what its version cannot express.

Group ranges are absolute sequences: ``start_group`` is the first group to
deliver and ``end_group`` the last one (inclusive); ``None`` means "latest" and
"unbounded". Frame bounds (lite-06) work the same way inside the first and last
group. Latencies are milliseconds.
"""

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
    """ANNOUNCE_PLEASE (lite-01..03), ANNOUNCE_SUBSCRIBE (04), ANNOUNCE_REQUEST (05, 06)."""

    prefix: str
    exclude_hop: int = 0
    """lite-04/05: the subscriber's own hop id; the publisher skips routes through it (0 = none)."""


@dataclass(frozen=True, slots=True)
class AnnounceInit:
    suffixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    """ANNOUNCE / ANNOUNCE_BROADCAST (lite-01..05)."""

    active: bool
    suffix: str
    hops: tuple[int, ...] = ()
    """Hop ids from the origin (lite-04+); lite-03 only counts hops, decoded as zeros (unknown)."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscribe_id: int
    broadcast: str
    track: str
    priority: int
    ordered: bool = False
    max_latency_ms: int = 0
    start_group: int | None = None
    end_group: int | None = None
    start_frame: int = 0
    """lite-06: index of the first frame to deliver in ``start_group``."""
    end_frame: int | None = None
    """lite-06: last frame (inclusive) to deliver in ``end_group``; needs ``end_group``."""


@dataclass(frozen=True, slots=True)
class SubscribeOk:
    """SUBSCRIBE_OK: empty in lite-02, ``priority`` only in lite-01, all fields in lite-03/04."""

    priority: int | None = None
    ordered: bool = False
    max_latency_ms: int = 0
    start_group: int | None = None
    end_group: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeUpdate:
    priority: int
    ordered: bool = False
    max_latency_ms: int = 0
    start_group: int | None = None
    end_group: int | None = None
    start_frame: int = 0
    end_frame: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeStart:
    """SUBSCRIBE_START (lite-05+): the resolved first group of the subscription."""

    group: int


@dataclass(frozen=True, slots=True)
class SubscribeEnd:
    """SUBSCRIBE_END (lite-05+): ``group`` is the first sequence that will never be delivered."""

    group: int


@dataclass(frozen=True, slots=True)
class SubscribeDrop:
    """SUBSCRIBE_DROP (lite-03+): groups ``start..end`` (inclusive) will not be delivered."""

    start: int
    end: int
    error: int = 0


SubscribeResponse = SubscribeOk | SubscribeStart | SubscribeEnd | SubscribeDrop


@dataclass(frozen=True, slots=True)
class GroupHeader:
    subscribe_id: int
    sequence: int
    frame_start: int = 0
    """lite-06: index of the first frame carried on this stream (non-zero when a subscription starts mid-group)."""


@dataclass(frozen=True, slots=True)
class AnnounceOk:
    """ANNOUNCE_OK (lite-05+): the publisher's hop id and how many announcements follow at once."""

    hop_id: int
    active_count: int


@dataclass(frozen=True, slots=True)
class AnnounceStart:
    """ANNOUNCE_START (lite-06): a broadcast is available; implicitly takes the next announce id."""

    suffix: str
    hops: tuple[int, ...] = ()
    cost: int = 0
    cold_cost: int = 0
    """What the route would cost once the sender stops carrying the broadcast."""


@dataclass(frozen=True, slots=True)
class AnnounceEnd:
    """ANNOUNCE_END (lite-06): the announcement with this id is retracted."""

    announce_id: int


@dataclass(frozen=True, slots=True)
class AnnounceUpdate:
    """ANNOUNCE_UPDATE (lite-06; RESTART in the reference): replace announcement ``announce_id`` in place."""

    announce_id: int
    hops: tuple[int, ...] = ()
    cost: int = 0
    cold_cost: int = 0


Announcement = AnnounceStart | AnnounceEnd | AnnounceUpdate


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH (lite-03+): one whole group (or, lite-06, a frame range of it)."""

    broadcast: str
    track: str
    priority: int
    group: int
    start_frame: int = 0
    end_frame: int | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """PROBE (lite-03+): ``None`` is "unknown" (0 on the wire); lite-03 has no RTT."""

    bitrate: int | None = None
    rtt_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Goaway:
    """GOAWAY (lite-04+): ``uri`` is where to reconnect, ``""`` for none."""

    uri: str = ""


@dataclass(frozen=True, slots=True)
class TrackRequest:
    """TRACK (lite-05+): ask for a track's fixed properties."""

    broadcast: str
    track: str


UNLIMITED_MAX_LATENCY_MS = 2**53 - 1
"""What TRACK_INFO carries for a publisher that keeps old groups without a time limit.

The wire has no "none": moq-rs and the JavaScript libraries send the largest
integer a JavaScript number holds exactly, and ``0`` means "only the latest
group". Our codecs read this value as no limit (``max_latency_ms == 0``).
"""


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """TRACK_INFO (lite-05+): a track's fixed publisher properties.

    ``max_latency_ms`` is the publisher's retention, how long it keeps a group
    once a newer one exists: ``0`` means no limit (as everywhere in this
    package), sent as :data:`UNLIMITED_MAX_LATENCY_MS`. ``latest_only`` says
    it keeps only the newest group, which the wire spells ``0``.
    ``timescale`` is timestamp units per second (never 0).
    """

    priority: int
    max_latency_ms: int
    timescale: int
    ordered: bool = False
    """lite-05 only; lite-06 (as moq-rs sends it) has no ordered byte."""
    latest_only: bool = False
    """The publisher keeps only the latest group (a max latency of 0 on the wire); ``max_latency_ms`` is then 0."""


@dataclass(frozen=True, slots=True)
class LiteSetup:
    """SETUP on the lite-05+ unidirectional setup stream.

    ``probe``: 0 none, 1 report, 2 increase. ``role``: 1 publisher, 2 subscriber,
    ``None`` both. ``path`` may carry ``?query``. ``extensions`` keeps unknown
    parameters as ``(id, raw value)`` pairs, ordered by id.
    """

    probe: int = 0
    path: str | None = None
    role: int | None = None
    cost: int | None = None
    origin: int | None = None
    extensions: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Datagram:
    """A lite-05+ QUIC datagram: one single-frame group; ``timestamp`` in the track's timescale."""

    subscribe_id: int
    sequence: int
    timestamp: int
    payload: bytes


ControlMessage = (
    AnnouncePlease | AnnounceInit | Announce | Subscribe | SubscribeOk | SubscribeUpdate | SessionInfo
    | AnnounceOk | AnnounceStart | AnnounceEnd | AnnounceUpdate | SubscribeStart | SubscribeEnd | SubscribeDrop
    | Fetch | Probe | Goaway | TrackRequest | TrackInfo | LiteSetup
)
