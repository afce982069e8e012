"""Shared test set-up: a clean environment per test and checks for the machine's services."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/postgres"


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Fail clearly when a needed service is down; skip only outside CI (CI unset)."""
    if service_up(host, port):
        return
    message = (
        f"{name} is not reachable at {host}:{port}. Start it (see the env notes: "
        f"e.g. pg_ctlcluster ... main start) and rerun."
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No COPYDESK_* or WRITER_* variable leaks into a test; data and cache dirs are tmp."""
    for name in list(os.environ):
        if name.startswith(("COPYDESK_", "WRITER_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COPYDESK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COPYDESK_CACHE_DIR", str(tmp_path / "cache"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") is not None:
        require_service("PostgreSQL", PG_HOST, PG_PORT)
