"""Who may publish and read what: grants, and JWTs with moq-relay's rules (:mod:`.tokens`, :mod:`.jwk`).

A :class:`Grant` is what the engine enforces on a session; an
:class:`Authenticator` decides one from a connection's path and ``?jwt=``
token. Keys and tokens follow moq-token (npm ``@moq/token``), so moq-relay's
keys and tokens work unchanged.
"""

from .jwk import Key, Scope, generate_key, public_jwk
from .tokens import (
    MAX_TOKEN_LENGTH,
    Authenticator,
    AuthError,
    Claims,
    Grant,
    KeySet,
    grant_for,
    query_token,
    sign_token,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "AuthError",
    "Authenticator",
    "Claims",
    "Grant",
    "Key",
    "KeySet",
    "Scope",
    "generate_key",
    "grant_for",
    "public_jwk",
    "query_token",
    "sign_token",
]
