"""Retrieved studies take the ordinary road: series completion, rules, dispatch to storescp."""

from pathlib import Path

import pytest

from executors.dispatch.dispatcher import DispatchSettings
from executors.dispatch.service import dispatch_service
from executors.query.worker import QuerySettings
from infra.catalogue import DispatchSucceeded, QueryJobCompleted, RulesEvaluated
from infra.topics import Topic
from tests.executors.dispatch.conftest import StoreSCP, dataset_bytes, dataset_bytes_of
from tests.executors.query.conftest import (
    Orthanc,
    QueryWorkerProcess,
    load_into,
    pacs,
    save_targets,
    submit,
    write_studies,
)
from tests.streams.harness import rule_saved, settings_saved, workers
from tests.support import publish, reading

pytestmark = pytest.mark.integration


def test_retrieved_studies_are_routed_by_a_rule_to_a_storescp_target(
    settings: QuerySettings,
    orthanc: Orthanc,
    storescp: StoreSCP,
    query_worker: QueryWorkerProcess,
    tmp_path: Path,
) -> None:
    studies = write_studies(
        tmp_path / "studies", ["ACC1", "ACC2", "ACC3", "ACC4"], series=1, instances=3
    )
    load_into(orthanc, studies)
    save_targets(
        settings,
        {
            "pacs": pacs(orthanc),
            "research": {
                "target_type": "dicom",
                "ip": "127.0.0.1",
                "port": storescp.port,
                "aet_target": "STORE",
            },
        },
    )
    publish(
        settings,
        [
            settings_saved(series_complete_trigger=2),
            rule_saved(
                "priors-to-research",
                rule="@Modality@ == 'CT' and 'CT ACC' in @StudyDescription@",
                action="route",
                target="research",
            ),
        ],
    )
    dispatcher = DispatchSettings(
        **settings.model_dump(include=set(DispatchSettings.model_fields) - {"data_dir"}),
        data_dir=settings.data_dir,
    )
    (tmp_path / "streams").mkdir()
    with (
        reading(settings, [Topic.JOBS, Topic.SERIES]) as reader,
        workers(settings, tmp_path / "streams"),
        dispatch_service(dispatcher),
    ):
        job_id = submit(settings, "pacs", pacs(orthanc))
        reader.wait(
            lambda r: len(r.of(DispatchSucceeded)) == 4,
            timeout_s=180,
            what="the four retrieved series at the target",
        )
    assert [c.job_id for c in reader.of(QueryJobCompleted)] == [job_id]
    assert {tuple(e.matched_rules) for e in reader.of(RulesEvaluated)} == {("priors-to-research",)}
    held = {
        dataset_bytes_of(data)
        for study in studies
        for data in orthanc.instance_files(study.study_uid).values()
    }
    assert {dataset_bytes(path) for path in storescp.received()} == held
