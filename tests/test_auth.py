"""JWT authorisation (moqt_asgi.auth) against moq-token's rules and the official @moq/token tools.

* Matching rules: segment-boundary prefixes, connection-path narrowing/keeping/refusing, the public
  prefix, grant unions, moq-token's own test vectors and the relay documentation's table.
* Interop: keys and tokens made by the ``moq-token`` CLI of @moq/token 0.2.3 (npm, pinned in
  ``tests/token/``) verify here and grant what moq-relay grants; keys from :func:`generate_key` sign
  with that CLI; tokens from :func:`sign_token` verify in the @moq/token library and CLI.
* Hostile tokens: every malformed, forged, expired or oversized token is an AuthError(401), nothing else.

Node.js and npm must be installed; a missing one fails these tests rather than skipping them.
``npm ci`` is cached in ``tests/token/node_modules``.
"""

from __future__ import annotations

import json
import shutil
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from moqt_asgi.auth.jwk import b64url_decode, b64url_encode, parse_json
from moqt_asgi.auth.tokens import (
    MAX_TOKEN_LENGTH,
    Authenticator,
    AuthError,
    Claims,
    Grant,
    Key,
    KeySet,
    generate_key,
    grant_for,
    public_jwk,
    query_token,
    sign_token,
)

from .conftest import TokenTools

NOW = 1_800_000_000.0
FUTURE = int(time.time()) + 3600  # tokens the CLI signs carry the real clock's iat; exp must be real too

# --- helpers -------------------------------------------------------------------------------------


def craft(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes | list[Any], key: Key | None) -> str:
    """A compact JWS with exactly this header and payload, signed by ``key`` (empty signature without one)."""
    def part(value: Any) -> str:
        return b64url_encode(value if isinstance(value, bytes) else json.dumps(value).encode())

    signing_input = f"{part(header)}.{part(payload)}"
    signature = key.sign(signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64url_encode(signature)}"


HS = generate_key("HS256", kid="hs")
HS_KEY = Key.from_dict(HS)
ES = generate_key("ES256", kid="es")
ES_PUBLIC = Key.from_dict(public_jwk(ES))
KEYS = KeySet([HS_KEY, ES_PUBLIC])


def refused(keys: KeySet, token: str, status: int = 401, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        keys.verify(token, **kwargs)
    assert info.value.status == status
    return info.value


def claims(root: str = "", put: tuple[str, ...] = (), get: tuple[str, ...] = (), exp: float | None = None) -> Claims:
    return Claims(root, put, get, exp, None)


# --- matching rules ------------------------------------------------------------------------------


def test_prefixes_match_on_segment_boundaries() -> None:
    grant = Grant("", publish=("foo",), subscribe=("",))
    assert grant.can_publish("foo") and grant.can_publish("foo/bar") and grant.can_publish("/foo/bar/")
    assert not grant.can_publish("foobar") and not grant.can_publish("fo") and not grant.can_publish("")
    assert grant.can_subscribe("anything/at/all") and grant.can_subscribe("")
    nothing = Grant("room")
    assert nothing.empty and not nothing.can_publish("") and not nothing.can_subscribe("x")
    assert not Grant(subscribe=("a",)).empty and Grant.everything("r") == Grant("r", ("",), ("",))


def test_grant_normalises_and_collapses_prefixes() -> None:
    grant = Grant("/room//1/", publish=("b/", "a/x", "a", "a//x/y"), subscribe=("x", "", "y"))
    assert grant == Grant("room/1", ("a", "b"), ("",))
    assert grant.absolute("/cam//0") == "room/1/cam/0" and Grant().absolute("cam") == "cam"
    assert Grant("r").absolute("") == "r"
    with pytest.raises(TypeError):
        Grant(publish="foo")  # type: ignore[arg-type]


def test_can_watch_is_overlap_with_the_subscribe_grant() -> None:
    grant = Grant("", subscribe=("a/b",))
    assert grant.can_watch("") and grant.can_watch("a") and grant.can_watch("a/b") and grant.can_watch("a/b/c")
    assert not grant.can_watch("a/bc") and not grant.can_watch("x") and not grant.can_watch("a/c")
    assert not Grant(publish=("",)).can_watch("")


@pytest.mark.parametrize(("root", "get", "put", "path", "expected"), [
    # moq-token's Claims::authorize test vectors
    ("room/123", ("",), ("alice",), "room/123", Grant("room/123", ("alice",), ("",))),
    ("room/123", ("bob",), ("alice",), "room/123/alice", Grant("room/123/alice", ("",), ())),
    ("demo", ("",), ("alice",), "/", Grant("", ("demo/alice",), ("demo",))),
    ("", ("demo",), (), "demo/room", Grant("demo/room", (), ("",))),
    ("/room/123/", ("/bob/",), (), "//room/123//", Grant("room/123", (), ("bob",))),
    # the relay documentation's table, connected at the root
    ("demo", ("",), ("my-stream",), "demo", Grant("demo", ("my-stream",), ("",))),
    ("", ("",), ("",), "", Grant.everything()),
    ("", ("",), (), "x", Grant("x", (), ("",))),
    ("", (), ("",), "x", Grant("x", ("",), ())),
    ("demo", ("",), (), "/", Grant("", (), ("demo",))),
    # narrowing keeps only what lies under the path; a grant above the path covers all of it
    ("demo", ("a", "b/c"), ("b",), "demo/b", Grant("demo/b", ("",), ("c",))),
    ("demo", ("a/b/c",), (), "demo/a", Grant("demo/a", (), ("b/c",))),
])
def test_grant_for_connection_path(root: str, get: tuple[str, ...], put: tuple[str, ...], path: str,
                                   expected: Grant) -> None:
    assert grant_for(claims(root, put, get, exp=NOW), path) == Grant(expected.root, expected.publish, expected.subscribe, NOW)


@pytest.mark.parametrize(("root", "get", "put", "path"), [
    ("foo", ("",), ("",), "foobar"),   # segment boundary: foo does not cover foobar
    ("demo", ("",), ("",), "other"),   # unrelated path
    ("", ("demo",), (), "other"),      # overlaps the root, but nothing is granted there
    ("demo", ("a",), ("b",), "demo/c"),
])
def test_grant_for_refuses_paths_outside_the_grant(root: str, get: tuple[str, ...], put: tuple[str, ...],
                                                    path: str) -> None:
    with pytest.raises(AuthError) as info:
        grant_for(claims(root, put, get), path)
    assert info.value.status == 403


def test_public_prefix_alone() -> None:
    auth = Authenticator(public="anon")
    assert auth.authorize("/anon", "") == Grant.everything("anon")
    assert auth.authorize("/anon/room/1", "foo=bar") == Grant.everything("anon/room/1")
    assert auth.authorize("/", "") == Grant("", ("anon",), ("anon",))
    for path in ("/other", "/anonymous", "/ano"):
        with pytest.raises(AuthError) as info:
            auth.authorize(path, "")
        assert info.value.status == 401
    assert Authenticator(public="").authorize("/any/where", "") == Grant.everything("any/where")
    watch = Authenticator(public_subscribe="live")
    assert watch.authorize("/live/x", "") == Grant("live/x", (), ("",))
    assert watch.authorize("", "") == Grant("", (), ("live",))


def test_public_and_token() -> None:
    auth = Authenticator(KeySet([HS_KEY]), public="anon")
    token = sign_token(HS, {"root": "demo", "get": ""})
    # as moq-relay: a token replaces public access (no union), a bad token never falls back to it
    assert auth.authorize("/", f"jwt={token}") == Grant("", (), ("demo",))
    assert auth.authorize("/", "") == Grant("", ("anon",), ("anon",))
    with pytest.raises(AuthError) as info:
        auth.authorize("/anon", f"jwt={token[:-2]}xx")
    assert info.value.status == 401
    with pytest.raises(AuthError) as info:
        auth.authorize("/anon", f"jwt={token}")  # a valid token for another root: refused, not anonymous
    assert info.value.status == 403
    # a server that wants both combines them
    both = auth.authorize("/", f"jwt={token}").union(auth.authorize("/", ""))
    assert both == Grant("", ("anon",), ("anon", "demo"))
    assert both.can_subscribe("demo/x") and both.can_publish("anon/me") and not both.can_publish("demo/x")
    # no keys: tokens are refused even where the path is public
    with pytest.raises(AuthError) as info:
        Authenticator(public="anon").authorize("/anon", f"jwt={token}")
    assert info.value.status == 401
    with pytest.raises(AuthError):
        Authenticator(KeySet([HS_KEY])).authorize("/demo", "")


def test_grant_union_rebases_onto_its_own_root() -> None:
    mine = Grant("a", ("x",), (), expires_at=50)
    assert mine.union(Grant("a", ("y",), ("",))) == Grant("a", ("x", "y"), ("",), 50)
    assert mine.union(Grant("", ("a/z", "b"), ("a",), 20)) == Grant("a", ("x", "z"), ("",), 20)  # narrowed
    assert mine.union(Grant("a/b", ("c",), ())) == Grant("a", ("b/c", "x"), (), 50)  # prefixed
    assert mine.union(Grant("elsewhere", ("",), ("",))) == mine  # unrelated roots add nothing
    assert Grant().union(Grant()).expires_at is None


def test_query_token() -> None:
    assert query_token("jwt=abc") == "abc" and query_token("?a=1&jwt=ab%20cd&b") == "ab cd"
    assert query_token("jwt=first&jwt=second") == "second" and query_token("jwt=one&jwt=") == "one"
    assert query_token("") is None and query_token("jwt=") is None and query_token("jwtx=1&xjwt=2") is None
    assert query_token("j%77t=enc+oded") == "enc oded"


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("jwk", [
    {"kty": "oct", "alg": "HS256", "k": b64url_encode(b"x" * 31)},                        # secret too short
    {"kty": "oct", "k": b64url_encode(b"x" * 32)},                                         # no alg
    {"kty": "oct", "alg": "none", "k": b64url_encode(b"x" * 32)},
    {"kty": "oct", "alg": "ES256", "k": b64url_encode(b"x" * 32)},                        # alg does not suit kty
    {"kty": "oct", "alg": "HS256", "k": b64url_encode(b"x" * 32), "kid": "../etc"},      # kid names a file
    {"kty": "oct", "alg": "HS256", "k": b64url_encode(b"x" * 32), "key_ops": ["fly"]},
    {"kty": "oct", "alg": "HS256", "k": b64url_encode(b"x" * 32), "scope": {"root": "a"}},  # useless scope
    {"kty": "oct", "alg": "HS256", "k": "not base64!"},
    {**public_jwk(ES), "alg": "ES384"},
    {**public_jwk(ES), "x": b64url_encode(b"\1" * 32)},                                   # not on the curve
    {**ES, "d": public_jwk(generate_key("ES256"))["x"]},                                  # d does not match x/y
    {"kty": "OKP", "alg": "EdDSA", "crv": "X25519", "x": b64url_encode(b"\0" * 32)},
    {"kty": "RSA", "alg": "RS256", "n": b64url_encode(b"\xff" * 128), "e": "AQAB"},         # 1024-bit modulus
    {"kty": "XYZ", "alg": "HS256"},
])
def test_bad_keys_are_refused(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Key.from_dict(jwk)


def test_key_files_and_legacy_forms(tmp_path: Path) -> None:
    legacy = {"alg": "HS256", "key_ops": ["sign", "verify"], "k": b64url_encode(b"s" * 32)}  # no kty: oct
    assert Key.from_dict(legacy).kty == "oct"
    encoded = tmp_path / "encoded.jwk"
    encoded.write_text(b64url_encode(json.dumps(HS).encode()))
    assert Key.from_file(encoded).to_dict() == HS
    assert KeySet.from_file(encoded).single
    assert Key.from_dict({**legacy, "k": legacy["k"] + "="}).kty == "oct"  # padded base64url is accepted
    with pytest.raises(ValueError):
        public_jwk(HS)
    assert public_jwk(ES) == {name: value for name, value in ES.items() if name != "d"} | {"key_ops": ["verify"]}
    assert {"kty", "alg", "kid", "key_ops"} <= set(generate_key("EdDSA")) and len(generate_key()["kid"]) == 16
    with pytest.raises(ValueError):
        generate_key("none")
    with pytest.raises(ValueError):
        Key.from_dict(public_jwk(ES)).sign(b"x")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "ES256", "ES384", "EdDSA", "RS256", "PS256", "RS512"])
def test_every_algorithm_round_trips(alg: str) -> None:
    private = generate_key(alg)
    verifier = Key.from_dict(private if alg.startswith("HS") else public_jwk(private))
    token = sign_token(private, {"root": "r", "put": ["a"], "exp": int(NOW) + 1})
    assert KeySet([verifier]).verify(token, now=NOW) == claims("r", ("a",), (), NOW + 1)
    other = generate_key(alg)
    refused(KeySet([Key.from_dict(other if alg.startswith("HS") else public_jwk(other))], single=True), token)


def test_signing_checks_like_verifying() -> None:
    for bad in ({"root": "r"}, {"put": []}, {"put": 5}, {"get": "a", "exp": 1.5}, {"root": None, "get": "a"}):
        with pytest.raises(ValueError):
            sign_token(HS, bad)
    scoped = generate_key("HS256", scope={"root": "project", "put": ["live"]})
    assert KeySet([Key.from_dict(scoped)]).verify(sign_token(scoped, {"root": "project/live/room", "put": ""}))
    with pytest.raises(ValueError):
        sign_token(scoped, {"root": "project", "put": "other"})
    with pytest.raises(ValueError):
        sign_token(scoped, {"root": "project/live", "get": ""})  # role escalation
    header = json.loads(b64url_decode(sign_token(HS, {"get": ""}).split(".")[0]))
    assert header == {"typ": "JWT", "alg": "HS256", "kid": "hs"}


# --- key selection -------------------------------------------------------------------------------


def test_key_selection() -> None:
    other = generate_key("HS256", kid="other")
    no_kid = {name: value for name, value in HS.items() if name != "kid"}
    token = sign_token(no_kid, {"get": ""})
    assert KeySet([HS_KEY]).verify(token).get == ("",)                   # one key: no kid needed
    assert refused(KeySet([HS_KEY, Key.from_dict(other)]), token).message.startswith("the token names no key")
    assert refused(KEYS, sign_token(other, {"get": ""})).message == "no key matches the token's kid"
    single = KeySet([HS_KEY], single=True)                               # --auth-key: kid is not consulted
    assert single.verify(sign_token({**HS, "kid": "renamed"}, {"get": ""})).get == ("",)
    assert KEYS.verify(sign_token(ES, {"put": "p"})).put == ("p",)


def test_key_directory(tmp_path: Path) -> None:
    (tmp_path / "hs.jwk").write_text(json.dumps(HS))
    (tmp_path / "es.jwk").write_text(b64url_encode(json.dumps(public_jwk(ES)).encode()))
    (tmp_path / "broken.jwk").write_text("{")
    keys = KeySet.from_dir(tmp_path)
    assert keys.verify(sign_token(HS, {"get": "a"})).get == ("a",)
    assert keys.verify(sign_token(ES, {"get": "b"})).get == ("b",)
    for kid in ("missing", "broken", "../hs", "a.b", "x" * 129):
        refused(keys, craft({"alg": "HS256", "kid": kid}, {"get": ""}, HS_KEY))
    refused(keys, sign_token({name: value for name, value in HS.items() if name != "kid"}, {"get": ""}))  # kid required
    rotated = generate_key("HS256", kid="hs")
    (tmp_path / "hs.jwk").write_text(json.dumps(rotated))  # the file is read again once it changes
    assert keys.verify(sign_token(rotated, {"get": "c"})).get == ("c",)
    refused(keys, sign_token(HS, {"get": "a"}))
    with pytest.raises(ValueError):
        KeySet.from_dir(tmp_path / "hs.jwk")


# --- time ----------------------------------------------------------------------------------------


def test_expiry_and_not_before() -> None:
    token = sign_token(HS, {"get": "", "exp": int(NOW)})
    assert KEYS.verify(token, now=NOW).exp == NOW          # expired only once exp < now
    refused(KEYS, token, now=NOW + 0.5)
    assert KEYS.verify(token, now=NOW + 5, leeway=10).exp == NOW
    refused(KEYS, sign_token(HS, {"get": "", "exp": 1}))   # wall clock by default
    early = sign_token(HS, {"get": "", "nbf": int(NOW) + 60})
    refused(KEYS, early, now=NOW)
    assert KEYS.verify(early, now=NOW + 60).get == ("",)
    assert KEYS.verify(sign_token(HS, {"get": "", "iat": int(NOW) + 10**6}), now=NOW).iat == NOW + 10**6  # iat is informational
    auth = Authenticator(KEYS)
    assert auth.authorize("/", f"jwt={token}", now=NOW).expires_at == NOW
    with pytest.raises(AuthError):
        auth.authorize("/", f"jwt={token}", now=NOW + 1)


# --- hostile tokens ------------------------------------------------------------------------------

GOOD_HEADER = {"alg": "HS256", "kid": "hs"}
GOOD = sign_token(HS, {"root": "r", "get": ""})


def _flip_signature() -> str:
    head, _, signature = GOOD.rpartition(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 1
    return f"{head}.{b64url_encode(bytes(raw))}"


def _stray_bits() -> str:
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    head, _, signature = GOOD.rpartition(".")  # 32 bytes in 43 characters: the last one has 2 unused bits
    return f"{head}.{signature[:-1]}{alphabet[alphabet.index(signature[-1]) | 1]}"


HOSTILE: dict[str, Callable[[], str]] = {
    "bad signature": _flip_signature,
    "signature of another key": lambda: sign_token(generate_key("HS256", kid="hs"), {"get": ""}),
    "payload swapped": lambda: ".".join([GOOD.split(".")[0], sign_token(HS, {"put": ""}).split(".")[1], GOOD.split(".")[2]]),
    "alg none": lambda: craft({"alg": "none", "kid": "hs"}, {"get": ""}, None),
    "alg none, no kid": lambda: craft({"alg": "none"}, {"get": ""}, None),
    "alg missing": lambda: craft({"kid": "hs"}, {"get": ""}, HS_KEY),
    "alg HS384 on an HS256 key": lambda: craft({"alg": "HS384", "kid": "hs"}, {"get": ""}, HS_KEY),
    "HS256 keyed with the ES256 public key": lambda: craft({"alg": "HS256", "kid": "es"}, {"get": ""}, Key.from_dict(
        {"kty": "oct", "alg": "HS256", "k": b64url_encode(json.dumps(public_jwk(ES)).encode())})),
    "expired": lambda: sign_token(HS, {"get": "", "exp": int(NOW) - 1}),
    "not yet valid": lambda: sign_token(HS, {"get": "", "nbf": int(NOW) + 3600}),
    "exp as text": lambda: craft(GOOD_HEADER, {"get": "", "exp": "never"}, HS_KEY),
    "exp as float": lambda: craft(GOOD_HEADER, {"get": "", "exp": NOW + 10.5}, HS_KEY),
    "exp as bool": lambda: craft(GOOD_HEADER, {"get": "", "exp": True}, HS_KEY),
    "exp too big": lambda: craft(GOOD_HEADER, {"get": "", "exp": 2**64}, HS_KEY),
    "grants nothing": lambda: craft(GOOD_HEADER, {"root": "r", "put": [], "get": []}, HS_KEY),
    "put is a number": lambda: craft(GOOD_HEADER, {"put": 7}, HS_KEY),
    "get holds a number": lambda: craft(GOOD_HEADER, {"get": ["a", 1]}, HS_KEY),
    "put is null": lambda: craft(GOOD_HEADER, {"put": None, "get": "a"}, HS_KEY),
    "root is a list": lambda: craft(GOOD_HEADER, {"root": ["a"], "get": ""}, HS_KEY),
    "payload is a list": lambda: craft(GOOD_HEADER, [{"get": ""}], HS_KEY),
    "payload is not JSON": lambda: craft(GOOD_HEADER, b"{get:''}", HS_KEY),
    "payload is not UTF-8": lambda: craft(GOOD_HEADER, b'{"get":"\xff"}', HS_KEY),
    "payload has NaN": lambda: craft(GOOD_HEADER, b'{"get":"","exp":NaN}', HS_KEY),
    "duplicate claim": lambda: craft(GOOD_HEADER, b'{"get":"","get":["x"]}', HS_KEY),
    "lone surrogate": lambda: craft(GOOD_HEADER, b'{"get":"\\ud800"}', HS_KEY),
    "audience": lambda: craft(GOOD_HEADER, {"get": "", "aud": "someone"}, HS_KEY),
    "critical header": lambda: craft({**GOOD_HEADER, "crit": ["b64"], "b64": False}, {"get": ""}, HS_KEY),
    "kid is a number": lambda: craft({"alg": "HS256", "kid": 1}, {"get": ""}, HS_KEY),
    "header is a list": lambda: craft(b'["HS256"]', {"get": ""}, HS_KEY),
    "deeply nested payload": lambda: craft(GOOD_HEADER, b'{"get":"","x":' + b"[" * 2000 + b"]" * 2000 + b"}", HS_KEY),
    "deeply nested header": lambda: craft(b'{"alg":"HS256","x":' + b"{" * 500 + b"}" * 500 + b"}", {"get": ""}, HS_KEY),
    "huge token": lambda: craft(GOOD_HEADER, {"get": "", "pad": "x" * MAX_TOKEN_LENGTH}, HS_KEY),
    "huge token, cheap to send": lambda: "a" * 10_000_000,
    "wrong kid": lambda: craft({"alg": "HS256", "kid": "nobody"}, {"get": ""}, HS_KEY),
    "missing kid with several keys": lambda: craft({"alg": "HS256"}, {"get": ""}, HS_KEY),
    "garbage base64": lambda: GOOD.replace(".", ".*", 1),
    "padded base64": lambda: GOOD + "==",
    "stray bits in base64": _stray_bits,  # decodes to the same bytes with a lenient decoder
    "two parts": lambda: GOOD.rpartition(".")[0],
    "four parts": lambda: GOOD + ".AAAA",
    "empty": lambda: "",
    "dots only": lambda: "..",
    "non-ASCII": lambda: GOOD.replace("e", "é", 1),
    "scope exceeded": lambda: craft(GOOD_HEADER, {"root": "other", "put": ""}, HS_KEY),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_tokens_are_401(name: str) -> None:
    keys = KEYS
    if name == "scope exceeded":
        scoped = Key.from_dict({**HS, "scope": {"root": "r", "get": [""]}})
        assert KeySet([scoped]).verify(GOOD, now=NOW).root == "r"
        keys = KeySet([scoped])
    token = HOSTILE[name]()
    started = time.monotonic()
    refused(keys, token, now=NOW)
    if token:  # (an empty jwt parameter counts as no token, so public access would apply)
        with pytest.raises(AuthError) as info:  # never a fallback to public access
            Authenticator(keys, public="").authorize("/r", f"jwt={token}", now=NOW)
        assert info.value.status == 401
    assert time.monotonic() - started < 5


def test_a_verify_only_key_is_needed_to_verify() -> None:
    sign_only = Key.from_dict({**HS, "key_ops": ["sign"]})
    refused(KeySet([sign_only]), sign_token(HS, {"get": ""}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_tokens(data: st.DataObject) -> None:
    token = data.draw(st.sampled_from([GOOD, sign_token(ES, {"root": "r", "put": ["a", "b"], "exp": int(NOW) + 5})]))
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.text(alphabet="AZaz09-_.=+/ %é\0", min_size=0, max_size=3))
    mutated = token[:position] + replacement + token[position + 1 :]
    assume(mutated != token)
    refused(KEYS, mutated, now=NOW)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
                    max_leaves=12)
CLAIMS = st.fixed_dictionaries({}, optional={"root": JSON | st.text(max_size=6), "put": JSON | st.lists(st.text(max_size=6)),
                                             "get": JSON | st.text(max_size=6), "exp": JSON, "iat": JSON, "nbf": JSON})


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, CLAIMS))
def test_fuzz_signed_payloads(payload: Any) -> None:
    """Any JSON, correctly signed, gives Claims or AuthError(401) and nothing else."""
    token = craft(GOOD_HEADER, json.dumps(payload).encode(), HS_KEY)
    try:
        result = KEYS.verify(token, now=NOW)
    except AuthError as exc:
        assert exc.status == 401
    else:
        assert isinstance(result, Claims) and (result.put or result.get)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda raw: b64url_encode(raw) + "." + b64url_encode(raw[::-1]) + "."))
def test_fuzz_text(text: str) -> None:
    refused(KEYS, text, now=NOW)


def test_parse_json_limits() -> None:
    assert parse_json('{"a": "[[[[", "b": [[1]]}', max_depth=3) == {"a": "[[[[", "b": [[1]]}
    assert parse_json('"\\"[["', max_depth=1) == '"[['
    with pytest.raises(ValueError):
        parse_json("[[[1]]]", max_depth=2)
    with pytest.raises(ValueError):
        parse_json('{"a": 1, "a": 2}')


# --- environment ---------------------------------------------------------------------------------


def test_from_env(tmp_path: Path) -> None:
    key_file = tmp_path / "key.jwk"
    key_file.write_text(json.dumps(HS))
    assert Authenticator.from_env({}) is None
    assert Authenticator.from_env({"MOQ_AUTH_KEY": ""}) is None
    both = Authenticator.from_env({"MOQ_AUTH_KEY": str(key_file), "MOQ_AUTH_PUBLIC": "anon"})
    assert both is not None and both.keys is not None and both.keys.single
    token = sign_token({**HS, "kid": "any"}, {"root": "demo", "put": "me"})
    assert both.authorize("/demo", f"jwt={token}") == Grant("demo", ("me",), ())
    assert both.authorize("/anon/x", "") == Grant.everything("anon/x")
    key_only = Authenticator.from_env({"MOQ_AUTH_KEY": str(key_file)})
    assert key_only is not None and key_only.authorize("/demo/me", f"jwt={token}") == Grant("demo/me", ("",), ())
    with pytest.raises(AuthError):
        key_only.authorize("/anon/x", "")
    public_only = Authenticator.from_env({"MOQ_AUTH_PUBLIC": "anon"})
    assert public_only is not None and public_only.keys is None
    assert public_only.authorize("/anon", "") == Grant.everything("anon")
    everything = Authenticator.from_env({"MOQ_AUTH_PUBLIC": ""})
    assert everything is not None and everything.authorize("/x", "") == Grant.everything("x")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "hs.jwk").write_text(json.dumps(HS))
    for environ in ({"MOQ_AUTH_KEY": str(tmp_path / "keys")}, {"MOQ_AUTH_KEY_DIR": str(tmp_path / "keys")}):
        from_dir = Authenticator.from_env(environ)
        assert from_dir is not None and from_dir.keys is not None and from_dir.keys.directory is not None
        assert from_dir.authorize("/demo", f"jwt={sign_token(HS, {'root': 'demo', 'get': ''})}") == Grant("demo", (), ("",))
    with pytest.raises(ValueError):
        Authenticator.from_env({"MOQ_AUTH_KEY": str(key_file), "MOQ_AUTH_KEY_DIR": str(tmp_path)})
    with pytest.raises(OSError):
        Authenticator.from_env({"MOQ_AUTH_KEY": str(tmp_path / "missing.jwk")})
    (tmp_path / "bad.jwk").write_text('{"alg": "HS256", "k": "c2hvcnQ"}')
    with pytest.raises(ValueError):
        Authenticator.from_env({"MOQ_AUTH_KEY": str(tmp_path / "bad.jwk")})
    jwks = tmp_path / "set.json"
    jwks.write_text(json.dumps({"keys": [HS, public_jwk(ES)]}))
    from_set = Authenticator.from_env({"MOQ_AUTH_KEY": str(jwks)})
    assert from_set is not None and from_set.keys is not None and len(from_set.keys) == 2
    assert from_set.authorize("/", f"jwt={sign_token(ES, {'get': 'x'})}") == Grant("", (), ("x",))


# --- the official @moq/token tools ---------------------------------------------------------------


def authorize(key_file: Path, token: str, path: str) -> Grant | int:
    try:
        return Authenticator(KeySet.from_file(key_file)).authorize(path, f"jwt={token}")
    except AuthError as exc:
        return exc.status


@pytest.mark.browser
def test_cli_keys_load(cli_keys: Path) -> None:
    hs, es, ed = (Key.from_file(cli_keys / name) for name in ("hs.jwk", "es.pub.jwk", "ed.pub.jwk"))
    assert (hs.kty, hs.alg, hs.private, len(hs.kid or "")) == ("oct", "HS256", True, 16)
    assert (es.kty, es.alg, es.private, es.key_ops) == ("EC", "ES256", False, frozenset({"verify"}))
    assert (ed.kty, ed.alg, ed.kid, ed.private) == ("OKP", "EdDSA", "ed-key", False)
    assert not (cli_keys / "b64.jwk").read_text().lstrip().startswith("{")
    assert Key.from_file(cli_keys / "b64.jwk").alg == "HS256"
    assert public_jwk(json.loads((cli_keys / "es.jwk").read_text())) == json.loads((cli_keys / "es.pub.jwk").read_text())


@pytest.mark.browser
def test_cli_tokens_grant_as_moq_relay(tools: TokenTools, cli_keys: Path) -> None:
    hs, es, ed = cli_keys / "hs.jwk", cli_keys / "es.pub.jwk", cli_keys / "ed.pub.jwk"
    demo = tools.cli("sign", "--key", str(hs), "--root", "demo", "--publish", "my-stream", "--subscribe", "")
    assert authorize(hs, demo, "/demo") == Grant("demo", ("my-stream",), ("",))
    assert authorize(hs, demo, "/") == Grant("", ("demo/my-stream",), ("demo",))
    assert authorize(hs, demo, "/demo/my-stream") == Grant.everything("demo/my-stream")
    assert authorize(hs, demo, "/demo/room") == Grant("demo/room", (), ("",))
    assert authorize(hs, demo, "/other") == authorize(hs, demo, "/demox") == 403
    assert authorize(es, demo, "/demo") == 401 and authorize(cli_keys / "b64.jwk", demo, "/demo") == 401  # other keys

    room = tools.cli("sign", "--key", str(cli_keys / "es.jwk"), "--root", "rooms/123", "--publish", "alice", "--subscribe", "",
                     "--expires", str(FUTURE))
    assert authorize(es, room, "/rooms/123") == Grant("rooms/123", ("alice",), ("",), float(FUTURE))
    assert authorize(es, room, "/rooms/123/bob") == Grant("rooms/123/bob", (), ("",), float(FUTURE))
    assert authorize(ed, room, "/rooms/123") == 401

    watch = tools.cli("sign", "--key", str(cli_keys / "ed.jwk"), "--subscribe", "demo", "live/a")
    assert authorize(ed, watch, "/demo/room") == Grant("demo/room", (), ("",))
    assert authorize(ed, watch, "/") == Grant("", (), ("demo", "live/a"))
    assert authorize(ed, watch, "/other") == 403
    assert abs((KeySet.from_file(ed).verify(watch).iat or 0) - time.time()) < 600  # @moq/token always sets iat

    expired = tools.cli("sign", "--key", str(cli_keys / "ed.jwk"), "--subscribe", "", "--expires", "1000")
    assert authorize(ed, expired, "/") == 401
    write_only = tools.cli("sign", "--key", str(hs), "--root", "demo", "--publish", "my-stream")
    assert authorize(hs, write_only, "/demo/room") == 403
    assert authorize(hs, write_only, "/demo") == Grant("demo", ("my-stream",), ())


@pytest.mark.browser
def test_cli_keys_in_a_key_directory(tools: TokenTools, cli_keys: Path, tmp_path: Path) -> None:
    for name in ("es", "ed"):
        public = json.loads((cli_keys / f"{name}.pub.jwk").read_text())
        shutil.copy(cli_keys / f"{name}.pub.jwk", tmp_path / f"{public['kid']}.jwk")
    keys = Authenticator(KeySet.from_dir(tmp_path))
    for name in ("es", "ed"):
        token = tools.cli("sign", "--key", str(cli_keys / f"{name}.jwk"), "--root", name, "--publish", "")
        assert keys.authorize(f"/{name}", f"jwt={token}") == Grant(name, ("",), ())
    with pytest.raises(AuthError):  # its kid names no file in the directory
        keys.authorize("/", "jwt=" + tools.cli("sign", "--key", str(cli_keys / "hs.jwk"), "--publish", ""))


@pytest.mark.browser
@pytest.mark.parametrize("alg", ["HS256", "ES256", "EdDSA"])
def test_cli_signs_with_our_keys(tools: TokenTools, tmp_path: Path, alg: str) -> None:
    private = generate_key(alg, kid=f"ours-{alg.lower()}")
    (tmp_path / "key.jwk").write_text(json.dumps(private))
    token = tools.cli("sign", "--key", str(tmp_path / "key.jwk"), "--root", "room", "--publish", "me", "--subscribe", "")
    verifier = private if alg == "HS256" else public_jwk(private)
    grant = Authenticator(KeySet([Key.from_dict(verifier)])).authorize("/room", f"jwt={token}")
    assert grant == Grant("room", ("me",), ("",))


@pytest.mark.browser
def test_library_both_ways(tools: TokenTools, cli_keys: Path) -> None:
    """One node process: @moq/token signs claim shapes we verify, and verifies tokens we signed."""
    key_text = {name: (cli_keys / f"{name}.jwk").read_text() for name in ("hs", "es", "ed", "es.pub", "ed.pub")}
    shapes: list[tuple[dict[str, Any], str, Grant | int]] = [
        ({"root": "demo", "put": "bbb", "get": ""}, "/demo", Grant("demo", ("bbb",), ("",))),
        ({"root": "", "get": ["a", "b/c"], "exp": FUTURE}, "/b", Grant("b", (), ("c",), float(FUTURE))),
        ({"root": "/x/", "put": ["/y/"]}, "/x/y/z", Grant("x/y/z", ("",), ())),
        ({"root": "demo", "put": []}, "/demo", 401),   # @moq/token 0.2.3 signs it; moq-relay refuses a useless token
        ({"root": "demo", "get": "", "exp": 1}, "/demo", 401),
    ]
    ours = {alg: generate_key(alg) for alg in ("HS256", "HS384", "HS512", "ES256", "ES384", "EdDSA", "RS256", "PS256")}
    our_tokens = {alg: sign_token(key, {"root": "demo", "put": ["a"], "get": "", "exp": FUTURE}) for alg, key in ours.items()}
    verify_jobs = [{"key": json.dumps(key if alg.startswith("HS") else public_jwk(key)), "token": our_tokens[alg], "root": "demo"}
                   for alg, key in ours.items()]
    tampered = our_tokens["ES256"].rpartition(".")[0] + "." + b64url_encode(b"\0" * 64)
    verify_jobs += [{"key": verify_jobs[3]["key"], "token": tampered, "root": "demo"},
                    {"key": verify_jobs[3]["key"], "token": our_tokens["ES256"], "root": "other"}]
    result = tools.library({"sign": [{"key": key_text[name], "claims": shape} for name in ("hs", "es", "ed")
                                     for shape, _, _ in shapes], "verify": verify_jobs})

    verifiers = {"hs": cli_keys / "hs.jwk", "es": cli_keys / "es.pub.jwk", "ed": cli_keys / "ed.pub.jwk"}
    signed = iter(result["signed"])
    for name in ("hs", "es", "ed"):
        for shape, path, expected in shapes:
            token = next(signed)
            assert isinstance(token, str), token
            assert authorize(verifiers[name], token, path) == expected, (name, shape)

    verified = result["verified"]
    for (alg, _), outcome in zip(ours.items(), verified, strict=False):
        assert outcome["ok"], (alg, outcome)
        assert outcome["claims"] == {"root": "demo", "put": ["a"], "get": "", "exp": FUTURE}
    assert not verified[-2]["ok"] and not verified[-1]["ok"]  # the library does refuse a bad signature and another root

    (cli_keys / "ours.pub.jwk").write_text(json.dumps(public_jwk(ours["EdDSA"])))
    printed = tools.cli("verify", "--key", str(cli_keys / "ours.pub.jwk"), "--root", "demo", stdin=our_tokens["EdDSA"])
    assert json.loads(printed)["put"] == ["a"]
