"""`talaria topics ensure` creates the catalogue once and fixes drift; the CLI drives a broker."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from infra.admin import TopicLayoutMismatch, TopicState, ensure_topics
from infra.kafka.broker import LocalBroker
from infra.settings import LogSettings
from infra.topics import CATALOGUE, Topic, topic_name
from tests.conftest import KAFKA_CACHE
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration


def retention(admin: AdminClient, name: str) -> str:
    resource = ConfigResource(ResourceType.TOPIC, name)
    (future,) = admin.describe_configs([resource]).values()
    return str(future.result(timeout=10)["retention.ms"].value)


def test_ensure_is_idempotent_and_corrects_retention_drift(log_settings: LogSettings) -> None:
    admin = AdminClient({"bootstrap.servers": log_settings.kafka_bootstrap})
    again = ensure_topics(log_settings)
    assert {report.state for report in again} == {TopicState.OK}
    assert len(again) == len(CATALOGUE)

    config = topic_name(Topic.CONFIG, prefix=log_settings.topic_prefix)
    instances = topic_name(Topic.INSTANCES, prefix=log_settings.topic_prefix)
    assert retention(admin, config) == "-1"  # the audit trail is kept forever
    heartbeats = topic_name(Topic.HEARTBEATS, prefix=log_settings.topic_prefix)
    assert retention(admin, heartbeats) == "3600000"  # only fresh heartbeats matter
    assert retention(admin, instances) == str(log_settings.log_retention_hours * 3_600_000)

    drift = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, instances, incremental_configs=[drift])
    (future,) = admin.incremental_alter_configs([resource]).values()
    future.result(timeout=10)
    wait_for(lambda: retention(admin, instances) == "1000", timeout_s=10, what="the drift")
    reports = {report.name: report.state for report in ensure_topics(log_settings)}
    assert reports[instances] is TopicState.RECONFIGURED
    assert retention(admin, instances) == str(log_settings.log_retention_hours * 3_600_000)


def test_a_topic_with_too_few_partitions_is_reported_and_grown_only_when_asked(
    kafka_broker: LocalBroker,
) -> None:
    settings = LogSettings(kafka_bootstrap=kafka_broker.layout.bootstrap, topic_prefix="narrow.")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    jobs = topic_name(Topic.JOBS, prefix="narrow.")
    (future,) = admin.create_topics([NewTopic(jobs, num_partitions=2)]).values()
    future.result(timeout=10)
    with pytest.raises(TopicLayoutMismatch, match="has 2 partitions"):
        ensure_topics(settings)
    grown = {report.name: report for report in ensure_topics(settings, grow_partitions=True)}
    assert grown[jobs].state is TopicState.GROWN
    wait_for(
        lambda: len(admin.list_topics(jobs, timeout=10).topics[jobs].partitions) == 6,
        timeout_s=10,
        what="6 partitions on the broker",
    )


def talaria(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ui.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_starts_reports_and_stops_a_persistent_broker(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TALARIA_DATA_DIR": str(tmp_path),
        "TALARIA_KAFKA_PORT": str(port),
        "TALARIA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "TALARIA_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "TALARIA_KAFKA_CACHE_DIR": str(KAFKA_CACHE),
        "TALARIA_KAFKA_HEAP_MB": "256",
    }
    try:
        assert talaria("kafka", "status", env=env).returncode == 1
        started = talaria("kafka", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert "Kafka ready" in started.stdout
        assert "-XX:TieredStopAtLevel=1" not in broker_command(tmp_path)  # C2 by default
        assert talaria("kafka", "status", env=env).returncode == 0
        ensured = talaria("topics", "ensure", env=env)
        assert ensured.returncode == 0, ensured.stderr
        assert "talaria.instances" in ensured.stdout
        assert talaria("kafka", "stop", env=env).returncode == 0
        assert talaria("kafka", "status", env=env).returncode == 1
        # Data persists across a restart: the topics are still there.
        env["TALARIA_KAFKA_OPTIMIZING_JIT"] = "false"
        assert talaria("kafka", "start", env=env).returncode == 0
        assert "-XX:TieredStopAtLevel=1" in broker_command(tmp_path)
        again = talaria("topics", "ensure", env=env)
        assert "created" not in again.stdout
    finally:
        talaria("kafka", "stop", env=env)


def broker_command(data_dir: Path) -> list[str]:
    """The command line of the broker `talaria kafka start` runs for `data_dir`."""
    pid = (data_dir / "kafka" / "broker.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_bad_settings_give_one_sentence_and_exit_code_1(tmp_path: Path) -> None:
    env = {**os.environ, "TALARIA_TOPIC_PREFIX": "bad/prefix", "TALARIA_DATA_DIR": str(tmp_path)}
    result = talaria("topics", "ensure", env=env)
    assert result.returncode == 1
    assert "TALARIA_TOPIC_PREFIX" in result.stderr
    assert "Traceback" not in result.stderr
