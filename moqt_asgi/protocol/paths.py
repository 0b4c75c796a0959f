"""Broadcast paths and announce prefixes.

moq-lite paths are relative and normalised: leading and trailing slashes
are dropped and repeated slashes collapse, so ``"/a/b"``, ``"a/b/"`` and
``"a//b"`` are all ``"a/b"``; the root prefix is ``""``. gomoqt's absolute
``"/a/b"`` form is accepted everywhere and converted at its dialect's edge.
"""

from __future__ import annotations


def normalize_path(path: str) -> str:
    """The canonical relative form of ``path``."""
    if "/" not in path:
        return path
    return "/".join(part for part in path.split("/") if part)


def has_prefix(path: str, prefix: str) -> bool:
    """True if ``path`` is ``prefix`` or lies under it, segment-wise."""
    if not prefix:
        return True
    return path == prefix or path.startswith(prefix + "/")


def strip_prefix(path: str, prefix: str) -> str:
    """``path`` relative to ``prefix`` (which it must lie under)."""
    if not prefix:
        return path
    return path[len(prefix) + 1 :] if path != prefix else ""


def join_path(prefix: str, suffix: str) -> str:
    if not prefix:
        return suffix
    if not suffix:
        return prefix
    return f"{prefix}/{suffix}"
