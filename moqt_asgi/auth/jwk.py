"""JSON Web Keys and compact-JWS signatures, as moq-token writes and reads them.

This is the key half of :mod:`moqt_asgi.auth`: parsing a JWK (RFC 7517) into a
:class:`Key` that can check and make signatures, generating keys, and the strict
base64url and JSON helpers the token parser shares. Signatures are computed
here with ``hmac`` and ``cryptography``; no JWT library is involved.

Key files follow moq-token (Rust crate 0.7, ``@moq/token`` on npm):

* a file holds one JWK as JSON, or the same JSON base64url-encoded (the CLI's
  ``--base64``); ``kty`` defaults to ``"oct"`` (keys written before ``kty`` was
  added), ``alg`` is required, ``key_ops`` defaults to ``["sign", "verify"]``;
* ``kid`` is 1 to 128 characters of ``[A-Za-z0-9_-]`` (it names ``{kid}.jwk``
  in a key directory, so nothing else is allowed);
* byte fields (``k``, ``x``, ``y``, ``d``, ``n``, ``e``, ...) are base64url,
  unpadded (padded is accepted too, as moq-token does);
* an ``oct`` secret is at least 32 bytes; ``alg`` must suit the key: HS256/384/512
  for ``oct``, ES256 with P-256 and ES384 with P-384 for ``EC``, EdDSA with
  Ed25519 for ``OKP``, RS256/384/512 and PS256/384/512 for ``RSA`` (2048 to
  8192 bits, the sizes moq-relay's verifier accepts);
* an optional ``scope`` (``root``, ``put``, ``get``) caps what tokens signed or
  verified with the key may grant; a scope that grants nothing is refused.

Everything that goes wrong while loading a key raises :class:`ValueError` (it
is configuration, not client input). :meth:`Key.verify` never raises: a
signature that cannot be parsed is simply not valid.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..protocol.paths import has_prefix, join_path, normalize_path

__all__ = [
    "ALGORITHMS",
    "Key",
    "Scope",
    "b64url_decode",
    "b64url_encode",
    "generate_key",
    "parse_json",
    "public_jwk",
]

ALGORITHMS = ("HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
"""Every ``alg`` moq-token knows; anything else (``none`` included) is refused."""

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HMAC_NAMES = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_CURVES: dict[str, tuple[str, ec.EllipticCurve, int]] = {"P-256": ("ES256", ec.SECP256R1(), 32),
                                                        "P-384": ("ES384", ec.SECP384R1(), 48)}
_KEY_OPS = frozenset({"sign", "verify", "decrypt", "encrypt"})
_RSA_PRIVATE = ("d", "p", "q", "dp", "dq", "qi")
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
MIN_OCT_SECRET = 32
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
MAX_KEY_FILE = 256 * 1024
MAX_JSON_DEPTH = 16


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JWS and JWK use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, allow_padding: bool = False) -> bytes:
    """Strict base64url: only the URL-safe alphabet, no stray bits, padding only when allowed.

    Raises :class:`ValueError` for anything else (Python's own decoder would
    silently skip characters it does not know).
    """
    if allow_padding:
        stripped = text.rstrip("=")
        if len(text) - len(stripped) > 2 or (len(text) != len(stripped) and len(text) % 4):
            raise ValueError("bad base64url padding")
        text = stripped
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:  # pragma: no cover - the checks above leave nothing for it
        raise ValueError("not base64url") from exc
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url (stray bits)")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse strict JSON: UTF-8, nesting at most ``max_depth``, no duplicate members, no NaN.

    The nesting is counted before the parser runs, so deep input never reaches
    the recursive decoder. Raises :class:`ValueError`.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth}")
        elif char in "]}":
            depth -= 1
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class Scope:
    """The ceiling a key puts on every token it signs or verifies (moq-token's JWK ``scope``).

    ``put`` and ``get`` are prefixes relative to ``root``. A token is allowed
    when each path it grants, resolved against its own root, sits at or under
    one of the scope's prefixes for the same role; otherwise the whole token is
    refused (permissions are never silently intersected).
    """

    root: str = ""
    put: tuple[str, ...] = ()
    get: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> Scope:
        if not isinstance(data, dict):
            raise ValueError("scope must be an object")
        root = data.get("root", "")
        if not isinstance(root, str):
            raise ValueError("scope root must be a string")
        scope = cls(root, _strings(data.get("put", []), "scope put"), _strings(data.get("get", []), "scope get"))
        if not scope.put and not scope.get:
            raise ValueError("key scope grants neither publish nor subscribe")
        return scope

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.root:
            out["root"] = self.root
        if self.put:
            out["put"] = list(self.put)
        if self.get:
            out["get"] = list(self.get)
        return out

    def allows(self, root: str, put: Iterable[str], get: Iterable[str]) -> bool:
        """Whether a token with this ``root``/``put``/``get`` stays inside the scope."""
        return _covers(self.root, self.put, root, put) and _covers(self.root, self.get, root, get)


def _covers(scope_root: str, granted: tuple[str, ...], claims_root: str, requested: Iterable[str]) -> bool:
    def absolute(root: str, relative: str) -> str:
        return join_path(normalize_path(root), normalize_path(relative))

    limits = [absolute(scope_root, grant) for grant in granted]
    return all(any(has_prefix(absolute(claims_root, path), limit) for limit in limits) for path in requested)


def _field(jwk: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = jwk.get(name)
    if value is None:
        if required:
            raise ValueError(f"JWK is missing {name!r}")
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"JWK member {name!r} must be a non-empty base64url string")
    return b64url_decode(value, allow_padding=True)


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


class Key:
    """One JWK, checked and ready to verify (and, with private material, sign) JWS signatures.

    Build with :meth:`from_dict`, :meth:`from_str` or :meth:`from_file`. The
    attributes are read-only in spirit: ``alg``, ``kty``, ``kid`` (or None),
    ``key_ops``, ``scope`` (or None) and ``private`` (whether it can sign).
    """

    __slots__ = ("_hmac", "_jwk", "_private", "_public", "_size", "alg", "key_ops", "kid", "kty", "private", "scope")

    alg: str
    kty: str
    kid: str | None
    key_ops: frozenset[str]
    scope: Scope | None
    private: bool
    _hmac: bytes | None
    _public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey | None
    _private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | None
    _size: int
    _jwk: dict[str, Any]

    def __init__(self) -> None:
        raise TypeError("use Key.from_dict, Key.from_str or Key.from_file")

    @classmethod
    def from_dict(cls, jwk: Mapping[str, Any]) -> Key:
        """Parse and check one JWK; raises :class:`ValueError` when it is not a usable moq-token key."""
        if not isinstance(jwk, Mapping):
            raise ValueError("a JWK must be a JSON object")
        key = object.__new__(cls)
        data = dict(jwk)
        kty = data.setdefault("kty", "oct")
        alg = data.get("alg")
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported or missing JWK alg {alg!r}")
        ops = data.get("key_ops", ["sign", "verify"])
        if not isinstance(ops, list) or not all(isinstance(op, str) and op in _KEY_OPS for op in ops):
            raise ValueError(f"bad key_ops {ops!r}")
        kid = data.get("kid")
        if kid is not None and (not isinstance(kid, str) or not _KID.fullmatch(kid)):
            raise ValueError("kid must be 1-128 characters of A-Z a-z 0-9 - _")
        key.alg, key.kty, key.kid, key.key_ops = alg, kty, kid, frozenset(ops)
        key.scope = Scope.from_dict(data["scope"]) if data.get("scope") is not None else None
        key._hmac = None
        key._public = key._private = None
        key._size = 0
        key._jwk = data
        if kty == "oct":
            key._load_oct(data)
        elif kty == "EC":
            key._load_ec(data)
        elif kty == "OKP":
            key._load_okp(data)
        elif kty == "RSA":
            key._load_rsa(data)
        else:
            raise ValueError(f"unsupported kty {kty!r}")
        key.private = key._hmac is not None or key._private is not None
        return key

    def _load_oct(self, jwk: Mapping[str, Any]) -> None:
        if self.alg not in _HMAC_NAMES:
            raise ValueError(f"alg {self.alg} does not suit an oct key")
        secret = _field(jwk, "k")
        assert secret is not None
        if len(secret) < MIN_OCT_SECRET:
            raise ValueError(f"oct key secret must be at least {MIN_OCT_SECRET} bytes")
        self._hmac = secret

    def _load_ec(self, jwk: Mapping[str, Any]) -> None:
        curve_name = jwk.get("crv")
        if not isinstance(curve_name, str) or curve_name not in _CURVES:
            raise ValueError(f"unsupported EC curve {curve_name!r}")
        alg, curve, size = _CURVES[curve_name]
        if self.alg != alg:
            raise ValueError(f"alg {self.alg} does not suit curve {curve_name}")
        x, y = _field(jwk, "x"), _field(jwk, "y")
        assert x is not None and y is not None
        if len(x) != size or len(y) != size:
            raise ValueError(f"EC coordinates for {curve_name} must be {size} bytes")
        public = ec.EllipticCurvePublicNumbers(_int(x), _int(y), curve).public_key()
        d = _field(jwk, "d", required=False)
        if d is not None:
            private = ec.derive_private_key(_int(d), curve)
            if private.public_key().public_numbers() != public.public_numbers():
                raise ValueError("EC private key does not match x/y")
            self._private = private
        self._public, self._size = public, size

    def _load_okp(self, jwk: Mapping[str, Any]) -> None:
        if jwk.get("crv") != "Ed25519" or self.alg != "EdDSA":
            raise ValueError("OKP keys must be Ed25519 with alg EdDSA")
        x = _field(jwk, "x")
        assert x is not None
        if len(x) != 32:
            raise ValueError("Ed25519 public key must be 32 bytes")
        public = ed25519.Ed25519PublicKey.from_public_bytes(x)
        d = _field(jwk, "d", required=False)
        if d is not None:
            if len(d) != 32:
                raise ValueError("Ed25519 private key must be 32 bytes")
            private = ed25519.Ed25519PrivateKey.from_private_bytes(d)
            if private.public_key() != public:
                raise ValueError("Ed25519 private key does not match x")
            self._private = private
        self._public = public

    def _load_rsa(self, jwk: Mapping[str, Any]) -> None:
        if self.alg[:2] not in ("RS", "PS"):
            raise ValueError(f"alg {self.alg} does not suit an RSA key")
        n, e = _field(jwk, "n"), _field(jwk, "e")
        assert n is not None and e is not None
        numbers = rsa.RSAPublicNumbers(_int(e), _int(n))
        if not MIN_RSA_BITS <= _int(n).bit_length() <= MAX_RSA_BITS:
            raise ValueError(f"RSA modulus must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        public = numbers.public_key()
        present = [name for name in _RSA_PRIVATE if jwk.get(name) is not None]
        if present and len(present) != len(_RSA_PRIVATE):
            raise ValueError("an RSA private key needs all of d, p, q, dp, dq, qi")
        if present:
            d, p, q, dp, dq, qi = (_int(_field(jwk, name) or b"") for name in _RSA_PRIVATE)
            self._private = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, numbers).private_key()
        self._public, self._size = public, (_int(n).bit_length() + 7) // 8

    @classmethod
    def from_str(cls, text: str) -> Key:
        """A JWK as JSON, or as base64url-encoded JSON (moq-token's two file formats)."""
        text = text.strip()
        if not text.startswith("{"):
            try:
                text = b64url_decode(text, allow_padding=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError("a key must be JSON or base64url-encoded JSON") from exc
        return cls.from_dict(parse_json(text))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Key:
        """Load a key file written by ``moq-token generate`` (either format)."""
        return cls.from_str(read_key_file(path))

    def to_dict(self) -> dict[str, Any]:
        """The JWK this key was built from (``kty`` filled in when it was absent)."""
        return copy.deepcopy(self._jwk)

    def __repr__(self) -> str:
        return f"Key(kty={self.kty!r}, alg={self.alg!r}, kid={self.kid!r}, private={self.private})"

    @property
    def hash_bits(self) -> str:
        return "256" if self.alg == "EdDSA" else self.alg[2:]

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's JWS signature (``alg``) of ``signing_input``. Never raises."""
        try:
            if self._hmac is not None:
                expected = hmac.digest(self._hmac, signing_input, _HMAC_NAMES[self.alg])
                return hmac.compare_digest(expected, signature)
            public = self._public
            if isinstance(public, ed25519.Ed25519PublicKey):
                if len(signature) != 64:
                    return False
                public.verify(signature, signing_input)
            elif isinstance(public, ec.EllipticCurvePublicKey):
                if len(signature) != 2 * self._size:
                    return False
                r, s = _int(signature[: self._size]), _int(signature[self._size :])
                public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[self.hash_bits]()))
            elif isinstance(public, rsa.RSAPublicKey):
                if len(signature) != self._size:
                    return False
                public.verify(signature, signing_input, self._rsa_padding(), _HASHES[self.hash_bits]())
            else:  # pragma: no cover - from_dict always sets one of the above
                return False
        except (InvalidSignature, ValueError, OverflowError):
            return False
        return True

    def sign(self, signing_input: bytes) -> bytes:
        """This key's JWS signature of ``signing_input``; :class:`ValueError` without private material or ``sign``."""
        if "sign" not in self.key_ops:
            raise ValueError("key_ops does not allow sign")
        if self._hmac is not None:
            return hmac.digest(self._hmac, signing_input, _HMAC_NAMES[self.alg])
        private = self._private
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return private.sign(signing_input)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(_HASHES[self.hash_bits]())))
            return r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")
        if isinstance(private, rsa.RSAPrivateKey):
            return private.sign(signing_input, self._rsa_padding(), _HASHES[self.hash_bits]())
        raise ValueError("this is a public key: it cannot sign")

    def _rsa_padding(self) -> padding.AsymmetricPadding:
        if self.alg.startswith("PS"):
            algorithm = _HASHES[self.hash_bits]()
            return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
        return padding.PKCS1v15()


def read_key_file(path: str | os.PathLike[str], *, limit: int = MAX_KEY_FILE) -> str:
    """A key or key-set file's text, refusing files over ``limit`` bytes."""
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)!r} is larger than {limit} bytes")
    return data.decode("utf-8")


def generate_key(alg: str = "HS256", *, kid: str | None = None, scope: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A new private JWK, as ``moq-token generate`` writes it.

    HS256/384/512 get a 32/48/64-byte secret, RS*/PS* a 2048-bit RSA key, ES256
    and ES384 a P-256/P-384 key, EdDSA an Ed25519 key. ``kid`` defaults to 16
    random hex digits (the CLI does the same); ``scope`` (``root``/``put``/``get``)
    is embedded as is. Pass the result to :func:`public_jwk` for the half a
    server needs with asymmetric algorithms.
    """
    if alg not in ALGORITHMS:
        raise ValueError(f"unsupported alg {alg!r}")
    jwk: dict[str, Any]
    if alg in _HMAC_NAMES:
        jwk = {"kty": "oct", "alg": alg, "k": b64url_encode(secrets.token_bytes({"HS256": 32, "HS384": 48, "HS512": 64}[alg]))}
    elif alg in ("ES256", "ES384"):
        crv = "P-256" if alg == "ES256" else "P-384"
        _, curve, size = _CURVES[crv]
        ec_key = ec.generate_private_key(curve)
        numbers = ec_key.private_numbers()
        jwk = {"kty": "EC", "alg": alg, "crv": crv, "x": b64url_encode(numbers.public_numbers.x.to_bytes(size, "big")),
               "y": b64url_encode(numbers.public_numbers.y.to_bytes(size, "big")),
               "d": b64url_encode(numbers.private_value.to_bytes(size, "big"))}
    elif alg == "EdDSA":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        raw = ed_key.private_bytes_raw()
        jwk = {"kty": "OKP", "alg": alg, "crv": "Ed25519", "x": b64url_encode(ed_key.public_key().public_bytes_raw()),
               "d": b64url_encode(raw)}
    else:
        rsa_numbers = rsa.generate_private_key(65537, MIN_RSA_BITS).private_numbers()

        def enc(value: int) -> str:
            return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))

        pub = rsa_numbers.public_numbers
        jwk = {"kty": "RSA", "alg": alg, "n": enc(pub.n), "e": enc(pub.e), "d": enc(rsa_numbers.d), "p": enc(rsa_numbers.p),
               "q": enc(rsa_numbers.q), "dp": enc(rsa_numbers.dmp1), "dq": enc(rsa_numbers.dmq1), "qi": enc(rsa_numbers.iqmp)}
    jwk["kid"] = secrets.token_hex(8) if kid is None else kid
    jwk["key_ops"] = ["sign", "verify"]
    if scope is not None:
        jwk["scope"] = Scope.from_dict(dict(scope)).to_dict()
    Key.from_dict(jwk)  # the same checks a reader applies (a bad kid, say)
    return jwk


def public_jwk(key: Mapping[str, Any]) -> dict[str, Any]:
    """The verify-only half of an asymmetric private JWK: private members dropped, ``key_ops`` = ``["verify"]``.

    Raises :class:`ValueError` for a symmetric (``oct``) key, which has no
    public half, and for a key that is not allowed to verify.
    """
    checked = Key.from_dict(key)
    if checked.kty == "oct":
        raise ValueError("an oct (symmetric) key has no public half")
    if "verify" not in checked.key_ops:
        raise ValueError("key_ops does not allow verify")
    public = {name: value for name, value in checked.to_dict().items() if name not in (*_RSA_PRIVATE, "oth")}
    public["key_ops"] = ["verify"]
    return public
