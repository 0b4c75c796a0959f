from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moqt_asgi.endpoints.certs import write_certificate

pytest_plugins = ["pytester"]  # test_testing.py runs the moqt_asgi.testing plugin in a project of its own

ROOT = Path(__file__).resolve().parent.parent
TOKEN_DIR = ROOT / "tests" / "token"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Certs:
    def __init__(self, cert: Path, key: Path, fingerprint: str) -> None:
        self.cert = cert
        self.key = key
        self.fingerprint = fingerprint


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    cert, key, fingerprint = write_certificate(tmp_path_factory.mktemp("certs"))
    return Certs(cert, key, fingerprint)


# --- the official @moq/token tools (tests/token/package.json) ---------------------------------------


class TokenTools:
    """The pinned @moq/token: its ``moq-token`` CLI and the library (through ``tests/token/interop.mjs``)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.cli_path = TOKEN_DIR / "node_modules" / "@moq" / "token" / "cli.js"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run([self.node, str(self.cli_path), *args], cwd=TOKEN_DIR, input=stdin, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, f"moq-token {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def library(self, jobs: dict[str, Any]) -> dict[str, Any]:
        result = subprocess.run([self.node, "interop.mjs"], cwd=TOKEN_DIR, input=json.dumps(jobs), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def tools() -> TokenTools:
    """``npm ci`` in tests/token when node_modules is missing or older than the lock file."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are needed for the token interop tests (tests/token/package.json)")
    lock = TOKEN_DIR / "package-lock.json"
    installed = TOKEN_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TOKEN_DIR, capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            pytest.fail(f"npm ci failed:\n{result.stdout}\n{result.stderr}")
    return TokenTools(node)


@pytest.fixture(scope="session")
def cli_keys(tools: TokenTools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys made by ``moq-token generate``: hs (HS256), es and es.pub (ES256), ed and ed.pub (EdDSA), b64 (HS256, --base64)."""
    out = tmp_path_factory.mktemp("cli-keys")
    tools.cli("generate", "--key", str(out / "hs.jwk"))
    tools.cli("generate", "--key", str(out / "es.jwk"), "--algorithm", "ES256", "--public", str(out / "es.pub.jwk"))
    tools.cli("generate", "--key", str(out / "ed.jwk"), "--algorithm", "EdDSA", "--public", str(out / "ed.pub.jwk"),
              "--id", "ed-key")
    tools.cli("generate", "--key", str(out / "b64.jwk"), "--base64")
    return out
