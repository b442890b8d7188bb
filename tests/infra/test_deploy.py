"""The multi-service deployment: the compose file is valid and names only real commands."""

import os
import subprocess
from pathlib import Path

import yaml
from typer.testing import CliRunner

from executors.cleanup.cleaner import CleanupSettings
from executors.dispatch.dispatcher import DispatchSettings
from executors.notify.notifier import NotifySettings
from executors.processing.settings import ProcessorSettings
from executors.query.worker import QuerySettings
from ingest.settings import IngestSettings
from projections.settings import ProjectionSettings
from streams.worker import StreamsSettings
from ui.cli import app
from ui.settings import UiSettings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "infra" / "deploy" / "compose.yaml"
REQUIRED = {
    "TALARIA_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
    "TALARIA_S3_BUCKET": "dicom",
    "TALARIA_S3_ACCESS_KEY_ID": "key",
    "TALARIA_S3_SECRET_ACCESS_KEY": "secret",
    "TALARIA_CLICKHOUSE_URL": "https://talaria:pw@clickhouse:8443/talaria",
    "TALARIA_SECRET_KEY": "a-long-random-secret-of-at-least-32-characters",
}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` (Debian ships Compose v1; `docker compose` v2 reads the same)."""
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_compose_file_is_valid_with_its_variables_set() -> None:
    result = compose_config(REQUIRED)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"receiver", "streams", "dispatcher", "processor", "projector", "ui"} <= set(services)
    assert (
        services["dispatcher"]["environment"]["TALARIA_KAFKA_BOOTSTRAP"]
        == "kafka-1:9092,kafka-2:9092"
    )


def test_a_missing_variable_is_named() -> None:
    result = compose_config({k: v for k, v in REQUIRED.items() if k != "TALARIA_S3_BUCKET"})
    assert result.returncode != 0
    assert "S3 bucket" in result.stderr


def test_every_service_command_exists() -> None:
    commands = {
        tuple(s["command"]) for s in yaml.safe_load(COMPOSE.read_text())["services"].values()
    }
    for command in sorted(commands):
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, f"talaria {' '.join(command)}: {result.output}"


def test_every_variable_the_compose_file_sets_is_a_setting_some_service_reads() -> None:
    known: set[str] = set()
    for settings in (
        IngestSettings,
        StreamsSettings,
        DispatchSettings,
        ProcessorSettings,
        NotifySettings,
        CleanupSettings,
        QuerySettings,
        ProjectionSettings,
        UiSettings,
    ):
        known |= {f"TALARIA_{name.upper()}" for name in settings.model_fields}
    services = yaml.safe_load(compose_config(REQUIRED).stdout)["services"]
    used = {name for service in services.values() for name in service["environment"]}
    assert used - known == set()
