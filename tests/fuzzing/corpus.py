"""Codec regression inputs: JSON lines under ``corpus/codecs/``, one input per line.

Each line is ``{"target": "subscribe@moq-lite-03", "limits": "tight", "chunk": 1,
"hex": "...", "expect": "too_large", "note": "..."}``; ``expect`` (optional) is
the error code's name, or ``"ok"`` if the input must decode. The deep run (``python -m benchmarks.fuzz``)
writes any input that fails in this format; append it to a file here and the
test suite replays it forever after.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CODEC_CORPUS = CORPUS_DIR / "codecs"
ENGINE_CORPUS = CORPUS_DIR / "engine"
"""Stream scripts for the engine fuzz tests (read by ``tests/test_fuzz_engine.py``)."""


@dataclass(frozen=True, slots=True)
class Entry:
    target: str
    limits: str
    data: bytes
    chunk: int = 1 << 20
    expect: str = ""
    note: str = ""

    def to_json(self) -> str:
        fields = {"target": self.target, "limits": self.limits, "chunk": self.chunk, "hex": self.data.hex()}
        if self.expect:
            fields["expect"] = self.expect
        fields["note"] = self.note
        return json.dumps(fields)

    @classmethod
    def from_json(cls, line: str) -> Entry:
        raw = json.loads(line)
        return cls(raw["target"], raw.get("limits", "default"), bytes.fromhex(raw["hex"]), int(raw.get("chunk", 1 << 20)),
                   raw.get("expect", ""), raw.get("note", ""))


def load(directory: Path = CODEC_CORPUS) -> Iterator[tuple[str, Entry]]:
    """``(where, entry)`` for every line of every ``*.jsonl`` file; ``where`` is ``file:line``."""
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                yield f"{path.name}:{number}", Entry.from_json(line)


def append(path: Path, entries: list[Entry]) -> None:
    with path.open("a") as out:
        for entry in entries:
            out.write(entry.to_json() + "\n")


__all__ = ["CODEC_CORPUS", "CORPUS_DIR", "ENGINE_CORPUS", "Entry", "append", "load"]
