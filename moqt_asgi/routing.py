"""Route table for setup handlers: path patterns with parameters."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .types import SetupHandler

OriginCheck = Sequence[str] | Callable[[str | None], bool] | None

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::(str|path|int))?}")
_CONVERTERS = {"str": "[^/]+", "path": ".*", "int": "[0-9]+"}


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``/rooms/{room}`` or ``/{rest:path}`` to a regular expression."""
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    regex, pos = "^", 0
    for match in _PARAM.finditer(pattern):
        regex += re.escape(pattern[pos : match.start()])
        regex += f"(?P<{match.group(1)}>{_CONVERTERS[match.group(2) or 'str']})"
        pos = match.end()
    regex += re.escape(pattern[pos:]) + "$"
    return re.compile(regex)


def origin_allowed(check: OriginCheck, origin: str | None) -> bool:
    """Apply an origin policy: ``None`` allows all; a list allows those (``"*"`` = any)."""
    if check is None:
        return True
    if callable(check):
        return bool(check(origin))
    if "*" in check:
        return True
    return origin is None or origin in check


@dataclass
class Route:
    """A setup handler for sessions whose path matches ``path``."""

    path: str
    handler: SetupHandler
    allow_origins: OriginCheck = None
    name: str | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = compile_pattern(self.path)

    def match(self, path: str) -> dict[str, str] | None:
        found = self._regex.match(path or "/")
        return found.groupdict() if found else None
