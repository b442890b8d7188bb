"""`talaria config apply` and `import-mercure` against a real broker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import LogSettings
from streams.view import read_configuration
from tests.streams.harness import ROOT

pytestmark = pytest.mark.integration


def talaria(settings: LogSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
        "COLUMNS": "200",
    }
    command = [sys.executable, "-c", "from ui.cli import main; main()", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_a_file_naming_a_missing_target_is_refused_and_a_good_one_is_published(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  ct:\n    rule: \"@Modality@ == 'CT'\"\n    target: nowhere\n")
    refused = talaria(log_settings, "config", "apply", str(bad))
    assert refused.returncode == 1
    assert "target 'nowhere' does not exist" in refused.stderr
    assert read_configuration(log_settings).rules == {}

    good = tmp_path / "good.yaml"
    good.write_text(
        "targets:\n  pacs: {target_type: dicom, ip: 10.0.0.9, port: '104', aet_target: PACS}\n"
        "rules:\n  ct: {rule: \"@Modality@ == 'CT'\", target: pacs, priority: urgent}\n"
        "settings: {series_complete_trigger: 30}\n"
    )
    applied = talaria(log_settings, "config", "apply", str(good), "--actor", "alice")
    assert applied.returncode == 0, applied.stderr
    config = read_configuration(log_settings)
    assert config.rules["ct"].target == ["pacs"]
    assert config.settings.series_complete_trigger == 30
    again = talaria(log_settings, "config", "apply", str(good))
    assert "0 change(s) published" in again.stdout


def test_a_mercure_configuration_is_imported_as_config_events(
    log_settings: LogSettings, tmp_path: Path
) -> None:
    mercure = tmp_path / "mercure.json"
    mercure.write_text(
        json.dumps(
            {
                "series_complete_trigger": 45,
                "targets": {"orthanc": {"target_type": "dicomweb", "url": "http://pacs/dicom-web"}},
                "modules": {"anon": {"docker_tag": "mercureimaging/mercure-anonymizer"}},
                "rules": {
                    "anon": {
                        "rule": "True",
                        "action": "both",
                        "target": "orthanc",
                        "processing_module": "anon",
                    }
                },
            }
        )
    )
    imported = talaria(log_settings, "config", "import-mercure", str(mercure))
    assert imported.returncode == 0, imported.stderr
    config = read_configuration(log_settings)
    assert config.rules["anon"].processing_module == ["anon"]
    assert config.targets["orthanc"].target_type == "dicomweb"
    assert config.settings.series_complete_trigger == 45
