"""The command line, run as real subprocesses."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import moq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import ROOT, Certs
from .helpers import cli, free_udp_port, stop_serve

pytestmark = pytest.mark.cli

TIMEOUT = 15


@pytest.fixture
def serve(certs: Certs) -> Iterator[object]:
    processes: list[subprocess.Popen[str]] = []

    def start(app: str, *extra: str) -> str:
        port = free_udp_port()
        process = subprocess.Popen(
            cli("serve", app, "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert), "--keyfile", str(certs.key),
                *extra),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving" in line, line
        return f"moql://127.0.0.1:{port}/"

    yield start
    for process in processes:
        stop_serve(process, TIMEOUT)


def test_cert_writes_short_lived_ecdsa_p256(tmp_path: Path) -> None:
    result = subprocess.run(cli("cert", "--out", str(tmp_path)), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    fingerprint = result.stdout.split("sha256:")[1].strip()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=14)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert oct((tmp_path / "key.pem").stat().st_mode & 0o777) == "0o600"


def test_sub_cli_prints_clock_frames(serve: object, certs: Certs) -> None:
    url = serve("examples.clock:moq")  # type: ignore[operator]
    result = subprocess.run(cli("sub", url, "clock", "seconds", "--fingerprint", certs.fingerprint, "--count", "2"),
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    stamps = [datetime.datetime.fromisoformat(line) for line in lines]
    assert stamps[0].tzinfo is not None and stamps[1] > stamps[0]


@pytest.mark.parametrize("version", ["moq-lite-04", "moq-lite-01"])
def test_versions_flag_restricts_serve_and_sub(serve: object, certs: Certs, version: str) -> None:
    url = serve("examples.clock:moq", "--versions", version)  # type: ignore[operator]
    for offered in (None, f"moq-lite-06,{version}"):
        extra = ("--versions", offered) if offered else ()
        result = subprocess.run(cli("-v", "sub", url, "clock", "seconds", "--fingerprint", certs.fingerprint,
                                    "--count", "1", *extra), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert f"using {version}" in result.stderr
        datetime.datetime.fromisoformat(result.stdout.strip())
    refused = subprocess.run(cli("sub", url, "clock", "seconds", "--fingerprint", certs.fingerprint, "--count", "1",
                                 "--versions", "moq-lite-05"), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode != 0 and "error" in refused.stderr
    bad = subprocess.run(cli("sub", url, "c", "t", "--versions", "moq-lite-99"), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert bad.returncode == 2 and "unknown version 'moq-lite-99'" in bad.stderr


@pytest.mark.interop
def test_moqrs_subscribes_to_served_clock(serve: object, certs: Certs) -> None:
    url = serve("examples.clock:moq")  # type: ignore[operator]

    async def subscribe() -> list[str]:
        async with moq.Client(url, tls_fingerprints=[certs.fingerprint], reconnect=False,
                              websocket_enabled=False) as client:
            broadcast = await asyncio.wait_for(client.announced_broadcast("clock"), TIMEOUT)
            track = await broadcast.subscribe_track("seconds")
            frames = []
            for _ in range(2):
                group = await asyncio.wait_for(track.next_group(), TIMEOUT)
                frames.append(bytes((await group.read_frame()).payload).decode())
            return frames

    frames = asyncio.run(subscribe())
    assert all(datetime.datetime.fromisoformat(f).utcoffset() == datetime.timedelta(0) for f in frames)


def test_pub_cli_into_relay_reaches_sub_cli(serve: object, certs: Certs) -> None:
    url = serve("examples.relay:moq")  # type: ignore[operator]
    sub = subprocess.Popen(cli("sub", url, "chat", "room", "--fingerprint", certs.fingerprint, "--count", "3"),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pub = subprocess.Popen(cli("pub", url, "chat", "room", "--fingerprint", certs.fingerprint, "--linger", "5"),
                           cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert pub.stdin is not None
    try:
        # keep writing until the subscriber has what it needs (it joins at the latest group)
        for n in range(200):
            if sub.poll() is not None:
                break
            pub.stdin.write(f"line {n}\n")
            pub.stdin.flush()
            try:
                sub.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        pub.stdin.close()
        pub.wait(timeout=TIMEOUT)
    assert sub.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    numbers = [int(line.split()[1]) for line in lines]
    assert all(line.startswith("line ") for line in lines) and numbers == sorted(numbers)


def test_url_without_port_is_a_clear_error() -> None:
    result = subprocess.run(cli("sub", "moql://127.0.0.1/", "a", "b", "--insecure"), capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 1
    assert "no port" in result.stderr


def test_wrong_fingerprint_is_refused(serve: object) -> None:
    url = serve("examples.clock:moq")  # type: ignore[operator]
    result = subprocess.run(cli("sub", url, "clock", "seconds", "--fingerprint", "00" * 32, "--count", "1"),
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 1
    assert "fingerprint" in result.stderr


def test_serve_rejects_a_non_app(certs: Certs) -> None:
    env = dict(os.environ)
    result = subprocess.run(cli("serve", "examples.clock:clock", "--certfile", str(certs.cert), "--keyfile",
                                str(certs.key)), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env)
    assert result.returncode != 0
    assert "not a moqt_asgi.MoQ app" in result.stderr
