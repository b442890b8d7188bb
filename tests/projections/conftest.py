"""Fixtures for the projection tests: one chDB folder per test session (chDB allows one folder
per process), one database per test."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.log import EventProducer
from infra.settings import LogSettings
from projections.settings import ProjectionSettings
from projections.store import ClickHouse


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


def open_store(folder: Path, *, database: str | None = None) -> ClickHouse:
    settings = ProjectionSettings(
        clickhouse_url=f"chdb://{folder}",
        clickhouse_database=database or f"t{uuid.uuid4().hex[:12]}",
    )
    store = ClickHouse.open(settings.clickhouse())
    store.migrate()
    return store


@pytest.fixture
def store(chdb_folder: Path) -> Iterator[ClickHouse]:
    """Migrated projection tables in a database of their own."""
    store = open_store(chdb_folder)
    yield store
    store.command("DROP DATABASE IF EXISTS {db}")


@pytest.fixture
def producer(log_settings: LogSettings) -> Iterator[EventProducer]:
    with EventProducer(log_settings, client_id="projections-test") as producer:
        yield producer
