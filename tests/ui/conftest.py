"""A real UI: services on the session broker and chDB, served by uvicorn on a free port."""

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from executors.query.service import query_service
from executors.query.worker import QuerySettings
from infra.kafka.broker import LocalBroker
from infra.settings import LogSettings
from tests.conftest import settings_for
from tests.support import free_port, wait_for
from ui.main import create_app
from ui.security import CSRF_HEADER
from ui.services import FIRST_ADMIN, Services, ensure_first_admin, open_services
from ui.settings import UiSettings

ADMIN_PASSWORD = "first-run-password"
NEW_ADMIN_PASSWORD = "a much better password"


@dataclass(frozen=True)
class Ui:
    url: str
    app: FastAPI
    services: Services
    settings: UiSettings

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def log_in(self, username: str, password: str) -> httpx.Client:
        """A client with a session and the CSRF header set."""
        client = self.client()
        token = client.get("/api/session").json()["csrf_token"]
        response = client.post(
            "/api/login",
            json={"username": username, "password": password},
            headers={CSRF_HEADER: token},
        )
        assert response.status_code == 200, response.text
        client.headers[CSRF_HEADER] = response.json()["csrf_token"]
        return client


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB allows one folder per process: every UI of the session shares it."""
    return tmp_path_factory.mktemp("chdb")


def ui_settings(log_settings: LogSettings, chdb_folder: Path, data_dir: Path) -> UiSettings:
    return UiSettings(
        kafka_bootstrap=log_settings.kafka_bootstrap,
        topic_prefix=log_settings.topic_prefix,
        consumer_session_timeout_ms=6000,
        consumer_heartbeat_ms=1000,
        consumer_max_poll_interval_ms=10_000,
        clickhouse_url=f"chdb://{chdb_folder}",
        clickhouse_database=f"t{uuid.uuid4().hex[:12]}",
        data_dir=data_dir,
        blob_dir=data_dir / "blobs",
        blob_min_free_bytes=0,
        initial_admin_password=SecretStr(ADMIN_PASSWORD),
        projector_batch=100,
    )


@contextmanager
def serving_ui(settings: UiSettings) -> Iterator[Ui]:
    """The app with its services, on a free port, for the block."""
    with open_services(settings) as services:
        ensure_first_admin(services)
        port = free_port()
        app = create_app(services)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, timeout_s=20, what="uvicorn")
            yield Ui(url=f"http://127.0.0.1:{port}", app=app, services=services, settings=settings)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@contextmanager
def query_worker(ui: Ui, data_dir: Path) -> Iterator[None]:
    """A query worker in this process, on the UI's log."""
    settings = QuerySettings(
        kafka_bootstrap=ui.settings.kafka_bootstrap,
        topic_prefix=ui.settings.topic_prefix,
        data_dir=data_dir,
        blob_dir=data_dir / "blobs",
        blob_min_free_bytes=0,
    )
    with query_service(settings):
        yield


@pytest.fixture
def ui(log_settings: LogSettings, chdb_folder: Path, tmp_path: Path) -> Iterator[Ui]:
    """A UI on a log of its own: the first-run admin exists, nothing else."""
    with serving_ui(ui_settings(log_settings, chdb_folder, tmp_path)) as running:
        yield running


@pytest.fixture(scope="module")
def shared_ui(
    kafka_broker: LocalBroker, chdb_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ui]:
    """One UI for a whole test module (tests that do not need an empty log)."""
    settings = ui_settings(settings_for(kafka_broker), chdb_folder, tmp_path_factory.mktemp("ui"))
    with serving_ui(settings) as running:
        yield running


@contextmanager
def logged_in(ui: Ui, username: str, password: str) -> Iterator[httpx.Client]:
    client = ui.log_in(username, password)
    try:
        yield client
    finally:
        client.close()


def changed_password(client: httpx.Client, old: str, new: str) -> None:
    response = client.post("/api/password", json={"current_password": old, "new_password": new})
    assert response.status_code == 200, response.text


@pytest.fixture
def admin(ui: Ui) -> Iterator[httpx.Client]:
    """The first-run admin, logged in, password already changed."""
    with logged_in(ui, FIRST_ADMIN, ADMIN_PASSWORD) as client:
        changed_password(client, ADMIN_PASSWORD, NEW_ADMIN_PASSWORD)
        yield client


@pytest.fixture(scope="module")
def shared_admin(shared_ui: Ui) -> Iterator[httpx.Client]:
    with logged_in(shared_ui, FIRST_ADMIN, ADMIN_PASSWORD) as client:
        changed_password(client, ADMIN_PASSWORD, NEW_ADMIN_PASSWORD)
        yield client


@pytest.fixture(scope="module")
def shared_reader(shared_ui: Ui, shared_admin: httpx.Client) -> Iterator[httpx.Client]:
    """A read-only user, logged in, password already changed."""
    created = shared_admin.post(
        "/api/users", json={"name": "reader", "role": "readonly", "password": "initial-pass-1"}
    )
    assert created.status_code == 201, created.text
    with logged_in(shared_ui, "reader", "initial-pass-1") as client:
        changed_password(client, "initial-pass-1", "reader-password-2")
        yield client
