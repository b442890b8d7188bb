"""The pure decisions of processing: the safety policy, task.json, routing and notifications."""

from datetime import datetime
from pathlib import Path

import pytest

from executors.processing import ModuleNotConfigured, ModuleRefused
from executors.processing.policy import Policy, StepPlace, container_spec
from executors.processing.task import (
    TaskContext,
    current_steps,
    follow_ups,
    notification_details,
    routed_targets,
    task_document,
)
from infra.catalogue import (
    BlobReference,
    DispatchSeries,
    ModuleStep,
    Notify,
    ProcessingStepCompleted,
    ProcessSeries,
)
from streams.config import Configuration, Module, Rule, Target

POLICY = Policy(
    module_user="1000:1000",
    allow_root=False,
    allowed_arguments=frozenset({"shm_size"}),
    allowed_volume_roots=(Path("/srv/models"),),
    default_timeout_s=600,
)
PLACE = StepPlace(job_id="job/1", attempt=2, step=1, in_dir=Path("/w/in"), out_dir=Path("/w/out"))
OUTPUT = BlobReference(key="processing/j/attempt-1/out/1.2/1.2.3.dcm", size=1, sha256="0" * 64)


def command(**fields: object) -> ProcessSeries:
    values: dict[str, object] = {
        "study_uid": "1.2",
        "job_id": "job-1",
        "rule": "ct",
        "series_uids": ["1.2.3"],
        "steps": [ModuleStep(module="ai", settings={"threshold": 5})],
        "inputs": [],
        "tags": {"PatientID": "P1", "AccessionNumber": "A1"},
        **fields,
    }
    return ProcessSeries.model_validate(values)


def step(result: object, module: str = "ai") -> ProcessingStepCompleted:
    return ProcessingStepCompleted(
        job_id="job-1",
        step=0,
        module=module,
        exit_code=0,
        duration_s=1,
        output_count=1,
        result=result,  # type: ignore[arg-type]
    )


def test_a_module_runs_locked_down_as_the_installation_user_with_mercures_folders() -> None:
    module = Module(
        docker_tag="ai:1",
        environment={"MODEL": "v2", "MERCURE_IN_DIR": "/x"},
        memory_limit="2g",
        cpu_limit=1.5,
        runtime="nvidia",
        docker_arguments={"shm_size": "1g"},
    )
    spec = container_spec("ai", module, policy=POLICY, place=PLACE)
    assert spec.name == "talaria-job-1-a2-s1"
    assert (spec.user, spec.network, spec.timeout_s) == ("1000:1000", False, 600)
    assert (spec.mem_limit, spec.nano_cpus, spec.runtime) == ("2g", 1_500_000_000, "nvidia")
    assert spec.arguments == {"shm_size": "1g"}
    assert spec.environment["MODEL"] == "v2"
    assert spec.environment["MERCURE_IN_DIR"] == "/tmp/data"
    assert spec.environment["HOLOSCAN_OUTPUT_PATH"] == "/tmp/output"


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (Module(docker_tag="x", requires_root=True), "requires root"),
        (Module(docker_tag="x", docker_arguments={"ipc_mode": "host"}), "outside the allow-list"),
        (Module(docker_tag="x", docker_arguments={"privileged": True}), "may not set"),
        (Module(docker_tag="x", additional_volumes={"/etc": {"bind": "/e"}}), "outside"),
        (
            Module(docker_tag="x", additional_volumes={"/srv/models/a": {"bind": "/tmp/data"}}),
            "over the job's folders",
        ),
    ],
)
def test_the_policy_refuses_what_the_installation_does_not_allow(
    module: Module, reason: str
) -> None:
    with pytest.raises(ModuleRefused, match=reason):
        container_spec("m", module, policy=POLICY, place=PLACE)


def test_root_runs_only_where_allowed_and_a_module_needs_an_image() -> None:
    rooted = Module(docker_tag="x", requires_root=True, timeout_s=5)
    allowed = Policy(**{**POLICY.__dict__, "allow_root": True})
    assert container_spec("m", rooted, policy=allowed, place=PLACE).user is None
    with pytest.raises(ModuleNotConfigured):
        container_spec("m", None, policy=POLICY, place=PLACE)


def test_mercure_json_text_fields_are_read_as_json() -> None:
    module = Module.model_validate(
        {
            "docker_tag": "x",
            "environment": '{"A": "1"}',
            "docker_arguments": "",
            "additional_volumes": '{"/srv/models": {"bind": "/models", "mode": "ro"}}',
        }
    )
    assert module.environment == {"A": "1"}
    assert module.docker_arguments == {}
    assert module.additional_volumes == {"/srv/models": {"bind": "/models", "mode": "ro"}}


def test_the_task_file_has_mercures_keys_and_only_the_running_step() -> None:
    rule = Rule(action="both", target=["pacs"], processing_module=["ai"], action_trigger="study")
    task = task_document(
        command(dispatch_targets=["pacs"], series_uids=["1.2.3", "1.2.4"]),
        step=0,
        module=Module(docker_tag="ai:1"),
        rule=rule,
        context=TaskContext(appliance="lab", server="host1", now=datetime(2026, 1, 2, 3, 4, 5)),
    )
    assert set(task) == {"id", "info", "dispatch", "process", "study", "nomad_info"}
    assert task["info"]["uid"] == "1.2"
    assert (task["info"]["uid_type"], task["info"]["acc"]) == ("study", "A1")
    assert task["info"]["sender_aet"] == "MISSING"
    assert task["process"]["settings"] == {"threshold": 5}
    assert task["process"]["module_config"]["docker_tag"] == "ai:1"
    assert task["dispatch"]["target_name"] == ["pacs"]
    assert task["dispatch"]["status"]["pacs"] == {"state": "waiting", "time": "2026-01-02 03:04:05"}
    assert task["study"]["received_series_uid"] == ["1.2.3", "1.2.4"]


def test_a_retry_takes_todays_settings_module_overridden_by_rule() -> None:
    config = Configuration(
        rules={
            "ct": Rule(
                action="process", processing_module=["ai"], processing_settings=[{"threshold": 9}]
            )
        },
        modules={"ai": Module(docker_tag="ai:2", settings={"threshold": 1, "mode": "fast"})},
    )
    assert current_steps(command(), config) == [
        ModuleStep(module="ai", settings={"threshold": 9, "mode": "fast"})
    ]
    assert current_steps(command(rule="gone"), config) == command().steps


def test_a_module_reroutes_only_where_the_rule_allows_it() -> None:
    config = Configuration(
        targets={"pacs": Target(target_type="dummy"), "research": Target(target_type="dummy")}
    )
    dynamic = Rule(dynamic_routing=True, dynamic_routing_allowed_targets="research")
    routing = [step({"__mercure_routing": {"target": "research"}})]
    assert routed_targets(routing, rule=dynamic, default=["pacs"], config=config) == ["research"]
    static = Rule()
    assert routed_targets(routing, rule=static, default=["pacs"], config=config) == ["pacs"]
    elsewhere = [step({"__mercure_routing": {"target": ["pacs"]}})]
    assert routed_targets(elsewhere, rule=dynamic, default=["x"], config=config) == ["x"]
    discard = [step({"__mercure_routing": {"discard": True}})]
    assert routed_targets(discard, rule=dynamic, default=["pacs"], config=config) == []


def test_a_finding_becomes_the_completion_notification_or_dispatch_follows() -> None:
    results = [step({"__mercure_notification": {"text": "nodule"}}), step([1, 2], module="b")]
    assert notification_details(results) == {"text": "ai: nodule", "requested": False}
    rule = Rule(action="process", processing_module=["ai"], notification_webhook="http://h")
    config = Configuration(rules={"ct": rule})
    (notify,) = follow_ups(
        command(), results=results, outputs=[OUTPUT], output_series=["1.2"], config=config
    )
    assert isinstance(notify, Notify)
    assert (notify.trigger, notify.details["text"]) == ("completion", "ai: nodule")
    (dispatch,) = follow_ups(
        command(dispatch_targets=["pacs"]),
        results=results,
        outputs=[OUTPUT],
        output_series=["1.2"],
        config=config,
    )
    assert isinstance(dispatch, DispatchSeries)
    assert (dispatch.target, dispatch.inputs, dispatch.series_uids) == ("pacs", [OUTPUT], ["1.2"])
    again = follow_ups(
        command(dispatch_targets=["pacs"]),
        results=results,
        outputs=[OUTPUT],
        output_series=["1.2"],
        config=config,
    )
    assert again[0].job_id == dispatch.job_id  # type: ignore[attr-defined]
