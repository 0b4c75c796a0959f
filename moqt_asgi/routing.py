"""Route table for setup handlers: path patterns with typed parameters (``/rooms/{room}``, ``/{n:int}``)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .types import SetupHandler

OriginCheck = Sequence[str] | Callable[[str | None], bool] | None

@dataclass(frozen=True, slots=True)
class Convertor:
    """A path-parameter type: what it matches, and the value it hands the handler (as Starlette's)."""

    regex: str
    convert: Callable[[str], Any]


CONVERTORS: dict[str, Convertor] = {
    "str": Convertor("[^/]+", str),
    "path": Convertor(".*", str),
    "int": Convertor("[0-9]+", int),
    "float": Convertor(r"[0-9]+(?:\.[0-9]+)?", float),
    "uuid": Convertor("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", uuid.UUID),
}
"""``{name}`` is ``{name:str}``; register more by adding to this table before routes are made."""

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?}")


def compile_pattern(pattern: str) -> tuple[re.Pattern[str], dict[str, Convertor]]:
    """``/rooms/{room}`` or ``/{rest:path}`` to a regular expression and each parameter's convertor."""
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    regex, pos = "^", 0
    convertors: dict[str, Convertor] = {}
    for match in _PARAM.finditer(pattern):
        name, kind = match.group(1), match.group(2) or "str"
        if kind not in CONVERTORS:
            raise ValueError(f"unknown path parameter type {kind!r} in {pattern!r}; known: {', '.join(CONVERTORS)}")
        if name in convertors:
            raise ValueError(f"path parameter {name!r} appears twice in {pattern!r}")
        convertors[name] = CONVERTORS[kind]
        regex += re.escape(pattern[pos : match.start()])
        regex += f"(?P<{name}>{convertors[name].regex})"
        pos = match.end()
    regex += re.escape(pattern[pos:]) + "$"
    return re.compile(regex), convertors


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
    _convertors: dict[str, Convertor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex, self._convertors = compile_pattern(self.path)

    def match(self, path: str) -> dict[str, Any] | None:
        """The converted path parameters if ``path`` matches (``{n:int}`` gives an ``int``), else ``None``."""
        found = self._regex.match(path or "/")
        if found is None:
            return None
        return {name: self._convertors[name].convert(value) for name, value in found.groupdict().items()}
