"""`talaria query submit|status|resume` against a real worker, Orthanc and the log."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from executors.query.service import query_service
from executors.query.worker import QuerySettings
from tests.executors.query.conftest import (
    ROOT,
    Orthanc,
    environment,
    load_into,
    pacs,
    save_targets,
    write_studies,
)

pytestmark = pytest.mark.integration


def talaria(settings: QuerySettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ui", "query", *args],
        cwd=ROOT,
        env={**environment(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_submit_follows_the_job_with_a_progress_bar_and_says_what_was_not_found(
    settings: QuerySettings, orthanc: Orthanc, tmp_path: Path
) -> None:
    studies = write_studies(tmp_path / "studies", ["ACC1", "ACC2"], series=1, instances=2)
    load_into(orthanc, studies)
    save_targets(settings, {"pacs": pacs(orthanc)})
    listed = tmp_path / "accessions.txt"
    listed.write_text("ACC2\nMISSING\n")

    unknown = talaria(settings, "submit", "--source", "nope", "ACC1")
    assert unknown.returncode == 1
    assert "talaria: no target named 'nope'" in unknown.stderr

    with query_service(settings):
        submitted = talaria(settings, "submit", "--source", "pacs", "ACC1", "--file", str(listed))
    assert submitted.returncode == 2, submitted.stdout + submitted.stderr
    job_id = re.search(r"query job ([0-9a-f-]{36}) submitted", submitted.stdout)
    assert job_id is not None, submitted.stdout
    assert f"query job {job_id[1]}: completed" in submitted.stdout
    assert "MISSING: not_found (not found at the source)" in submitted.stdout

    status = talaria(settings, "status", job_id[1])
    assert status.returncode == 0, status.stderr
    assert f"job {job_id[1]} from pacs: completed (run 1)" in status.stdout
    rows = re.findall(r"│ (ACC1|ACC2|MISSING)\s+│ (\w+)\s+│", status.stdout)
    assert dict(rows) == {"ACC1": "retrieved", "ACC2": "retrieved", "MISSING": "not_found"}

    resumed = talaria(settings, "resume", job_id[1])
    assert resumed.returncode == 1
    assert "is completed: only a paused job resumes" in resumed.stderr
