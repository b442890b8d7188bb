"""mercure's task file and what a job's results decide, as pure functions.

`task_document` builds the `task.json` a module finds in its input folder, with mercure's keys
(`id`, `info`, `dispatch`, `process`, `study`, `nomad_info`): `process` holds only the step being
run, as mercure hands each step of a chain. `current_steps` re-reads the module settings of a
job from today's configuration (module settings overridden by the rule's) for a retry.
`follow_ups` turns the results into commands: `DispatchSeries` for the targets (the rule's, or
those a module's `__mercure_routing` chose when the rule allows dynamic routing), else a
completion `Notify` carrying the modules' `__mercure_notification` texts.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from executors.notices import derived_job_id, outcome_notices
from infra.catalogue import (
    BlobReference,
    Command,
    DispatchSeries,
    ModuleStep,
    ProcessingStepCompleted,
    ProcessSeries,
)
from streams.config import Configuration, Module, Rule

JsonObject = dict[str, Any]
MISSING = "MISSING"
TALARIA_VERSION = "talaria-0.1.0"


@dataclass(frozen=True, kw_only=True)
class TaskContext:
    """Facts about the installation and the moment that go into a task file."""

    appliance: str
    server: str
    now: datetime


def task_document(
    command: ProcessSeries,
    *,
    step: int,
    module: Module | None,
    rule: Rule | None,
    context: TaskContext,
) -> JsonObject:
    """The `task.json` for step `step` of `command`."""
    return {
        "id": command.job_id,
        "info": _info(command, rule, context),
        "dispatch": _dispatch(command.dispatch_targets, context),
        "process": {
            "module_name": command.steps[step].module,
            "module_config": None if module is None else module.model_dump(mode="json"),
            "settings": command.steps[step].settings,
            "retain_input_images": command.retain_input_images,
            "output": None,
        },
        "study": _study(command, rule, context) if _is_study(command, rule) else {},
        "nomad_info": None,
    }


def _is_study(command: ProcessSeries, rule: Rule | None) -> bool:
    if rule is not None:
        return rule.action_trigger == "study"
    return len(command.series_uids) > 1


def _info(command: ProcessSeries, rule: Rule | None, context: TaskContext) -> JsonObject:
    tags = command.tags
    study_level = _is_study(command, rule)
    return {
        "action": rule.action if rule else ("both" if command.dispatch_targets else "process"),
        "uid": command.study_uid if study_level else command.series_uids[0],
        "uid_type": "study" if study_level else "series",
        "triggered_rules": {command.rule: True},
        "applied_rule": command.rule,
        "patient_name": tags.get("PatientName", MISSING),
        "mrn": tags.get("PatientID", MISSING),
        "acc": tags.get("AccessionNumber", MISSING),
        "sender_address": tags.get("SenderAddress", MISSING),
        "mercure_version": TALARIA_VERSION,
        "mercure_appliance": context.appliance,
        "mercure_server": context.server,
        "device_serial_number": tags.get("DeviceSerialNumber"),
        "fail_stage": None,
        "sender_aet": tags.get("SenderAET", MISSING),
        "receiver_aet": tags.get("ReceiverAET", MISSING),
    }


def _dispatch(targets: Sequence[str], context: TaskContext) -> JsonObject:
    if not targets:
        return {}
    moment = context.now.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "target_name": list(targets),
        "status": {target: {"state": "waiting", "time": moment} for target in targets},
        "retries": None,
        "next_retry_at": None,
        "series_uid": None,
    }


def _study(command: ProcessSeries, rule: Rule | None, context: TaskContext) -> JsonObject:
    moment = context.now.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "study_uid": command.study_uid,
        "complete_trigger": rule.study_trigger_condition if rule else "timeout",
        "complete_required_series": rule.study_trigger_series if rule else "",
        "creation_time": moment,
        "last_receive_time": moment,
        "received_series": [command.tags.get("SeriesDescription", "")],
        "received_series_uid": list(command.series_uids),
        "complete_force": False,
        "complete_force_action": rule.study_force_completion_action if rule else "discard",
    }


def current_steps(command: ProcessSeries, config: Configuration) -> list[ModuleStep]:
    """The command's chain with today's settings (module's, overridden by the rule's)."""
    rule = config.rules.get(command.rule)
    if rule is None:
        return list(command.steps)
    return [
        ModuleStep(
            module=step.module, settings=rule.module_settings(i, config.modules.get(step.module))
        )
        for i, step in enumerate(command.steps)
    ]


def routed_targets(
    results: Sequence[ProcessingStepCompleted],
    *,
    rule: Rule | None,
    default: Sequence[str],
    config: Configuration,
) -> list[str]:
    """Targets after the last module's `__mercure_routing` (only if the rule allows it)."""
    directive = _routing_directive(results)
    if directive is None or rule is None or not rule.dynamic_routing:
        return list(default)
    if directive.get("discard", False):
        return []
    requested = directive.get("target")
    requested = [requested] if isinstance(requested, str) else requested
    if not requested or not isinstance(requested, list):
        return list(default)
    allowed = rule.dynamic_routing_allowed_targets
    if any(
        target not in config.targets or (allowed and target not in allowed) for target in requested
    ):
        return list(default)
    return [str(target) for target in requested]


def _routing_directive(results: Sequence[ProcessingStepCompleted]) -> JsonObject | None:
    last = results[-1].result if results else None
    directive = last.get("__mercure_routing") if isinstance(last, dict) else None
    return directive if isinstance(directive, dict) else None


def notification_details(results: Sequence[ProcessingStepCompleted]) -> JsonObject:
    """The modules' `__mercure_notification` texts ("module: text" lines) and requests."""
    texts = []
    requested = False
    for step in results:
        notification = (
            step.result.get("__mercure_notification") if isinstance(step.result, dict) else None
        )
        if not isinstance(notification, dict):
            continue
        if notification.get("text"):
            texts.append(f"{step.module}: {notification['text']}")
        requested = requested or bool(notification.get("requested"))
    return {"text": "\n".join(texts), "requested": requested} if texts or requested else {}


def follow_ups(
    command: ProcessSeries,
    *,
    results: Sequence[ProcessingStepCompleted],
    outputs: Sequence[BlobReference],
    output_series: Sequence[str],
    config: Configuration,
) -> list[Command]:
    """Commands after a successful chain: dispatch the outputs, or notify completion."""
    rule = config.rules.get(command.rule)
    targets = routed_targets(results, rule=rule, default=command.dispatch_targets, config=config)
    if targets:
        return [
            DispatchSeries(
                study_uid=command.study_uid,
                lane=command.lane,
                job_id=derived_job_id(command, "dispatch", target),
                rule=command.rule,
                rules=[command.rule],
                target=target,
                series_uids=list(output_series),
                inputs=list(outputs),
                tags=command.tags,
                completion_id=command.completion_id,
            )
            for target in targets
        ]
    rule_named = [(command.rule, rule)]
    return list(
        outcome_notices(
            command, rule_named, trigger="completion", details=notification_details(results)
        )
    )


def failure_notice(command: ProcessSeries, *, reason: str, config: Configuration) -> list[Command]:
    """The error `Notify` of a failed job, if its rule notifies on errors."""
    rule_named = [(command.rule, config.rules.get(command.rule))]
    return list(outcome_notices(command, rule_named, trigger="error", details={"reason": reason}))
