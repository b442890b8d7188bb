"""The JSON API on one UI: config CRUD as events, tester, queue and archive from projections,
and the role check on every write (a read-only user gets 403, anywhere)."""

from typing import Any

import httpx
import pytest

from infra.catalogue import (
    JobRetryRequested,
    QueueSuspended,
    ReprocessRequested,
    RuleDeleted,
    RuleSaved,
    TargetSaved,
)
from infra.events import Envelope
from infra.topics import Topic
from tests.projections.story import CT_SERIES, JOB, STUDY, story
from tests.support import publish, reading, wait_for
from tests.ui.conftest import Ui

pytestmark = pytest.mark.integration

PACS = {"target_type": "dicom", "ip": "127.0.0.1", "port": 11999, "aet_target": "PACS"}
CT_RULE = {"name": "ct-to-pacs", "rule": "@Modality@ == 'CT'", "target": ["pacs"]}


def _config_events(ui: Ui) -> list[Envelope]:
    with reading(ui.settings, [Topic.CONFIG]) as log:
        wait_for(lambda: bool(log.seen), timeout_s=10, what="config events")
        return [envelope for envelope, _ in log.seen]


def test_a_target_and_a_rule_become_config_events_with_actor_and_before_after(
    shared_ui: Ui, shared_admin: httpx.Client
) -> None:
    assert shared_admin.post("/api/targets", json={"name": "pacs", **PACS}).status_code == 201
    created = shared_admin.post("/api/rules", json=CT_RULE)
    assert created.status_code == 201, created.text
    assert created.json()["reads_tags"] == ["Modality"]
    named = shared_admin.put("/api/rules/ct-to-pacs", json={**CT_RULE, "priority": "urgent"})
    assert named.status_code == 422, "an update names the rule in its path only"
    body = {key: value for key, value in CT_RULE.items() if key != "name"}
    assert shared_admin.put("/api/rules/ct-to-pacs", json={**body, "priority": "urgent"}).is_success

    assert [r["priority"] for r in shared_admin.get("/api/rules").json()] == ["urgent"]
    events = _config_events(shared_ui)
    assert [e.actor for e in events if isinstance(e.payload, RuleSaved)] == ["admin", "admin"]
    update = [e.payload for e in events if isinstance(e.payload, RuleSaved)][1]
    assert update.before == {"rule": "@Modality@ == 'CT'", "target": ["pacs"]}
    assert update.after == {**update.before, "priority": "urgent"}
    assert any(isinstance(e.payload, TargetSaved) for e in events)


def test_invalid_config_is_refused_with_the_reason(shared_admin: httpx.Client) -> None:
    no_target = shared_admin.post("/api/rules", json={**CT_RULE, "name": "x", "target": ["nope"]})
    assert no_target.status_code == 422
    assert "target 'nope' does not exist" in no_target.json()["detail"]
    bad_syntax = shared_admin.post(
        "/api/rules", json={"name": "y", "rule": "__import__('os')", "action": "discard"}
    )
    assert bad_syntax.status_code == 422
    bad_port = shared_admin.post("/api/targets", json={"name": "z", **PACS, "port": 0})
    assert bad_port.status_code == 422
    assert "port" in bad_port.json()["detail"]


def test_a_target_in_use_cannot_be_deleted_until_its_rule_is(
    shared_ui: Ui, shared_admin: httpx.Client
) -> None:
    shared_admin.post("/api/targets", json={"name": "spare", **PACS})
    shared_admin.post("/api/rules", json={**CT_RULE, "name": "spare-rule", "target": ["spare"]})
    in_use = shared_admin.delete("/api/targets/spare")
    assert in_use.status_code == 409
    assert "spare-rule" in in_use.json()["detail"]
    assert shared_admin.delete("/api/rules/spare-rule").status_code == 204
    assert shared_admin.delete("/api/targets/spare").status_code == 204
    assert shared_admin.get("/api/targets/spare").status_code == 404
    deleted = [e.payload for e in _config_events(shared_ui) if isinstance(e.payload, RuleDeleted)]
    assert deleted[0].name == "spare-rule"


def test_modules_keep_settings_limits_and_flags(shared_admin: httpx.Client) -> None:
    module = {
        "name": "anonymizer",
        "docker_tag": "talaria/anon:1",
        "settings": {"keep": ["PatientSex"]},
        "memory_limit": "2g",
        "cpu_limit": 1.5,
        "network_enabled": True,
    }
    assert shared_admin.post("/api/modules", json=module).status_code == 201
    stored = shared_admin.get("/api/modules/anonymizer").json()
    assert stored["settings"] == {"keep": ["PatientSex"]}
    assert (stored["cpu_limit"], stored["network_enabled"]) == (1.5, True)
    negative = shared_admin.put("/api/modules/anonymizer", json={"cpu_limit": -1})
    assert negative.status_code == 422


def test_rule_tester_completion_checker_and_tags(shared_reader: httpx.Client) -> None:
    def tried(rule: str, tags: dict[str, str]) -> str:
        response = shared_reader.post("/api/rules-test", json={"rule": rule, "tags": tags})
        outcome: str = response.json()["outcome"]
        return outcome

    assert tried("@Modality@ == 'CT'", {"Modality": "CT"}) == "match"
    assert tried("@Modality@ == 'CT'", {"Modality": "MR"}) == "no match"
    assert tried("int(@SeriesNumber@) > 1", {"SeriesNumber": "abc"}) == "error"
    check = shared_reader.post(
        "/api/rules-test/completion",
        json={"expression": "'T1' and 'T2'", "descriptions": ["T1 sag", "T2 ax"]},
    )
    assert check.json()["met"] is True
    assert "PatientName" in shared_reader.get("/api/tags").json()


def test_queue_and_archive_show_the_projections_and_actions_are_operator_events(
    shared_ui: Ui, shared_admin: httpx.Client
) -> None:
    publish(shared_ui.settings, story())

    def archived() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = shared_admin.get(
            "/api/archive", params={"patient_name": "doe"}
        ).json()["rows"]
        return rows

    wait_for(lambda: len(archived()) == 2, timeout_s=30, what="the story in the archive")
    detail = shared_admin.get(f"/api/archive/{CT_SERIES}").json()
    assert detail["series"]["study_uid"] == STUDY
    assert "InstanceReceived" in [event["type"] for event in detail["timeline"]]

    queue = shared_admin.get("/api/queue").json()
    assert set(queue) == {"processing", "routing", "pending_studies", "failures", "suspended"}
    assert shared_admin.post("/api/queue/suspend", json={"queue": "dispatch"}).status_code == 204
    assert shared_admin.get("/api/queue").json()["suspended"] == ["dispatch"]
    assert shared_admin.post(f"/api/jobs/{JOB}/retry").status_code == 204
    assert shared_admin.post("/api/jobs/no-such-job/retry").status_code == 404
    reprocess = shared_admin.post(f"/api/archive/{CT_SERIES}/reprocess", json={"rule": None})
    assert reprocess.status_code == 202

    with reading(shared_ui.settings, [Topic.OPERATIONS]) as log:
        log.wait(lambda r: bool(r.of(ReprocessRequested)), timeout_s=10, what="operator events")
    assert log.of(QueueSuspended)[0].queue == "dispatch"
    assert log.of(JobRetryRequested)[-1].job_id == JOB
    assert log.of(ReprocessRequested)[0].series_uid == CT_SERIES

    def audited(kind: str) -> list[dict[str, Any]]:
        entries = shared_admin.get("/api/audit").json()["entries"]
        return [entry for entry in entries if entry["type"] == kind]

    wait_for(lambda: bool(audited("QueueSuspended")), timeout_s=20, what="the audit projection")
    assert audited("QueueSuspended")[0]["actor"] == "admin"
    assert audited("UserSaved")
    assert all(e["after"]["credential"] == "(sealed password hash)" for e in audited("UserSaved"))


NOT_WRITES = {
    "/api/login",
    "/api/logout",
    "/api/password",
    "/api/rules-test",
    "/api/rules-test/completion",
    "/api/rules-test/file-tags",
}


def test_a_read_only_user_gets_403_on_every_write(
    shared_ui: Ui, shared_reader: httpx.Client
) -> None:
    writes = [
        (method.upper(), path)
        for path, operations in shared_ui.app.openapi()["paths"].items()
        if path not in NOT_WRITES
        for method in operations
        if method != "get"
    ]
    assert len(writes) >= 17
    for method, template in writes:
        path = template.format(name="pacs", study_uid=STUDY, series_uid=CT_SERIES, job_id=JOB)
        response = shared_reader.request(method, path, json={})
        assert response.status_code == 403, (method, path, response.text)
        assert "read-only" in response.text
