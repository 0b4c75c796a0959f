"""Media over moq-lite in moq-dev's hang format: catalog, containers, fMP4 ingest, JSON data tracks, recording.

A hang broadcast (named ``….hang``) holds a ``catalog.json`` track that
lists its renditions (:class:`Catalog`), one track per rendition whose
groups each start at a keyframe, in the ``legacy`` or ``cmaf`` container,
and optionally JSON data tracks. :class:`HangBroadcast` publishes one;
:class:`Fmp4Ingest` / :func:`publish_fmp4` feed it from fragmented MP4
(ffmpeg); :class:`Recorder` writes a subscribed broadcast to a playable
fragmented MP4 file.
"""

from .catalog import (
    AudioConfig,
    AudioSection,
    Catalog,
    CatalogError,
    Container,
    JsonTrack,
    VideoConfig,
    VideoSection,
)
from .container import ContainerError, DecodedSample, decode_cmaf, decode_legacy, decode_loc, encode_legacy, encode_loc
from .ingest import Fmp4Ingest, Fmp4Parser, publish_fmp4
from .jsontracks import (
    JsonSnapshotProducer,
    JsonStreamProducer,
    SnapshotDecoder,
    StreamDecoder,
    diff,
    merge_patch,
    read_catalogs,
    read_snapshots,
    read_stream,
)
from .mp4 import Mp4Error
from .publisher import CATALOG_TRACK, HangBroadcast, MediaTrack, hang_name
from .record import Recorder

__all__ = [
    "CATALOG_TRACK", "AudioConfig", "AudioSection", "Catalog", "CatalogError", "Container", "ContainerError",
    "DecodedSample", "Fmp4Ingest", "Fmp4Parser", "HangBroadcast", "JsonSnapshotProducer", "JsonStreamProducer",
    "JsonTrack", "MediaTrack", "Mp4Error", "Recorder", "SnapshotDecoder", "StreamDecoder", "VideoConfig",
    "VideoSection", "decode_cmaf", "decode_legacy", "decode_loc", "diff", "encode_legacy", "encode_loc", "hang_name",
    "merge_patch", "publish_fmp4", "read_catalogs", "read_snapshots", "read_stream",
]
