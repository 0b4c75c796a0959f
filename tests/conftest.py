from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moqt_asgi.certs import write_certificate

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fails the test if it leaves tasks running."""
    before = set(asyncio.all_tasks())
    yield
    for _ in range(20):
        leaked = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
        if not leaked:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"tasks left running: {leaked}")
