"""The Query page and its JSON API against a real query worker and Orthanc."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.catalogue import AccessionFound, AccessionRetrieved
from infra.topics import Topic
from tests.executors.dispatch.conftest import Orthanc, orthanc
from tests.executors.query.conftest import load_into, pacs, write_studies
from tests.support import reading, wait_for
from tests.ui.conftest import Ui, query_worker

pytestmark = pytest.mark.integration
__all__ = ["orthanc"]


def job_of(admin: httpx.Client, job_id: str) -> dict[str, Any]:
    response = admin.get(f"/api/query/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def until(admin: httpx.Client, job_id: str, shown: Callable[[dict[str, Any]], bool]) -> None:
    wait_for(lambda: shown(job_of(admin, job_id)), timeout_s=90, what=f"job {job_id}")


def statuses(job: dict[str, Any]) -> dict[str, str]:
    return {a["accession"]: a["status"] for a in job["accessions"]}


def test_a_job_submitted_in_the_ui_is_paused_resumed_retried_and_shown(
    ui: Ui, admin: httpx.Client, orthanc: Orthanc, tmp_path: Path
) -> None:
    load_into(orthanc, write_studies(tmp_path / "studies", ["ACC1", "ACC2"], series=1, instances=2))
    created = admin.post("/api/targets", json={"name": "pacs", **pacs(orthanc)})
    assert created.status_code == 201, created.text

    refused = [
        ({"source": "nope", "accessions": "ACC1"}, "no target named 'nope'"),
        ({"source": "pacs", "accessions": " \n, "}, "at least one accession"),
        ({"source": "pacs", "accessions": "ACC1", "forced_rule": "x"}, "no rule named 'x'"),
        ({"source": "pacs", "accessions": "A" * 17}, "at most 16 characters"),
    ]
    for body, reason in refused:
        response = admin.post("/api/query/jobs", json=body)
        assert response.status_code == 422, response.text
        assert reason in response.text

    # No worker yet: the job waits, is paused, and stays paused when a worker comes.
    submitted = admin.post(
        "/api/query/jobs", json={"source": "pacs", "accessions": "ACC1\nACC2\nMISSING"}
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job_id"]
    assert job_of(admin, job_id)["status"] == "running"
    assert admin.post(f"/api/query/jobs/{job_id}/pause").status_code == 204
    assert job_of(admin, job_id)["status"] == "paused"
    assert admin.post(f"/api/query/jobs/{job_id}/pause").status_code == 409
    with reading(ui.settings, [Topic.JOBS]) as reader, query_worker(ui, tmp_path / "worker"):
        page = admin.get("/query")
        assert page.status_code == 200
        assert job_id in page.text
        assert "Resume" in page.text
        assert not reader.of(AccessionFound)

        assert admin.post(f"/api/query/jobs/{job_id}/resume").status_code == 204
        until(admin, job_id, lambda job: job["status"] == "completed")
        job = job_of(admin, job_id)
        assert statuses(job) == {"ACC1": "retrieved", "ACC2": "retrieved", "MISSING": "not_found"}
        assert (job["retrieved"], job["not_found"], job["total"]) == (2, 1, 3)
        assert job["submitted_by"] == "admin"

        assert admin.post(f"/api/query/jobs/{job_id}/retry").status_code == 204
        until(admin, job_id, lambda job: job["run"] == 2 and job["status"] == "completed")
        assert statuses(job_of(admin, job_id))["MISSING"] == "not_found"
        retrieved = [r.accession for r in reader.of(AccessionRetrieved)]
        assert sorted(retrieved) == ["ACC1", "ACC2"], "a retry leaves retrieved accessions alone"

    listed = admin.get("/api/query/jobs").json()
    assert [job["job_id"] for job in listed] == [job_id]
    assert admin.get("/api/query/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    page = admin.get("/query").text
    assert "2 retrieved, 1 not found, 0 failed of 3" in page
    assert "Retry" in page
