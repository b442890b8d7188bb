"""Service health on the overview: a real executor service publishes heartbeats on the
heartbeats topic, the UI shows it healthy, and stale once it has stopped."""

from pathlib import Path
from typing import Any

import httpx
import pytest

from executors.service import ExecutorService, ExecutorSettings
from infra.catalogue import ServiceHeartbeat
from infra.heartbeat import instance_name
from infra.topics import Topic
from tests.support import reading, wait_for
from tests.ui.conftest import Ui

pytestmark = pytest.mark.integration

INTERVAL_S = 0.5


def _notifiers(admin: httpx.Client) -> list[dict[str, Any]]:
    response = admin.get("/api/overview")
    assert response.status_code == 200, response.text
    return [s for s in response.json()["services"] if s["service"] == "notifier"]


def test_a_running_service_is_healthy_and_a_stopped_one_stale(
    ui: Ui, admin: httpx.Client, tmp_path: Path
) -> None:
    assert _notifiers(admin) == []
    assert "No service has sent a heartbeat" in admin.get("/").text
    settings = ExecutorSettings(
        kafka_bootstrap=ui.settings.kafka_bootstrap,
        topic_prefix=ui.settings.topic_prefix,
        heartbeat_interval_s=INTERVAL_S,
        blob_dir=tmp_path / "blobs",
    )
    service = ExecutorService(settings, name="notifier", build_loops=lambda _service: [])
    with reading(settings, [Topic.HEARTBEATS]) as log, service:
        wait_for(lambda: len(log.seen) >= 3, timeout_s=20, what="three heartbeats on the log")
        beats = [envelope.payload for envelope, _ in log.seen]
        assert all(isinstance(beat, ServiceHeartbeat) for beat in beats)
        assert {
            (b.service, b.instance, b.status) for b in beats if isinstance(b, ServiceHeartbeat)
        } == {("notifier", instance_name(), "running")}
        wait_for(
            lambda: [s["healthy"] for s in _notifiers(admin)] == [True],
            timeout_s=20,
            what="the notifier shown healthy",
        )
        shown = _notifiers(admin)[0]
        assert shown["instance"] == instance_name()
        assert shown["age_s"] <= 3 * INTERVAL_S
        page = admin.get("/").text
        assert "notifier" in page
        assert "healthy, last heartbeat" in page

    wait_for(
        lambda: [s["healthy"] for s in _notifiers(admin)] == [False],
        timeout_s=20,
        what="the stopped notifier shown stale",
    )
    assert _notifiers(admin)[0]["age_s"] > 3 * INTERVAL_S
    assert "stale, last heartbeat" in admin.get("/").text
    # The embedded projector keeps history, not heartbeats: it stores the rest and goes on.
    wait_for(lambda: _stored(ui, "!=") > 0, timeout_s=20, what="events in the events table")
    assert _stored(ui, "=") == 0
    assert ui.services.projector is not None
    assert ui.services.projector.running()


def _stored(ui: Ui, comparison: str) -> int:
    rows = ui.services.store.select(
        f"SELECT count() FROM {{db}}.events WHERE type {comparison} 'ServiceHeartbeat'"
    ).rows
    return int(rows[0][0])
