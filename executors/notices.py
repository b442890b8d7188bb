"""The `Notify` commands that follow a job's outcome, for the rules that asked for them.

The processor (a module chain that finished or failed) and the dispatcher (a target that
confirmed a series, or a job that went to the failure queue) share them: a rule that has a
webhook or an email gets a "completion" notice when its trigger is on (or when a module
requested one and the rule notifies on request), and an "error" notice when a job fails for good.
"""

import uuid
from collections.abc import Iterable
from typing import Any, Literal

from infra.catalogue import DispatchSeries, Notify, ProcessSeries
from streams.config import Rule

JobCommand = ProcessSeries | DispatchSeries
Trigger = Literal["completion", "error"]
_JOB_NAMESPACE = uuid.UUID("0d7c3e52-6f0a-4b8e-93a1-6c2f1e8b5a47")


def derived_job_id(command: JobCommand, *parts: str) -> str:
    """The id of a job that follows from this attempt; the same whenever it is derived again."""
    return str(uuid.uuid5(_JOB_NAMESPACE, "/".join((command.job_id, str(command.attempt), *parts))))


def wants(rule: Rule, trigger: Trigger, details: dict[str, Any]) -> bool:
    """Whether `rule` is to be notified of this outcome."""
    if not rule.notifies:
        return False
    if trigger == "error":
        return rule.notification_trigger_error
    return rule.notification_trigger_completion or (
        rule.notification_trigger_completion_on_request and bool(details.get("requested"))
    )


def outcome_notices(
    command: JobCommand,
    rules: Iterable[tuple[str, Rule | None]],
    *,
    trigger: Trigger,
    details: dict[str, Any],
) -> list[Notify]:
    """One `Notify` per named rule that wants `trigger`; a rule deleted since (None) gets none."""
    return [
        Notify(
            study_uid=command.study_uid,
            lane=command.lane,
            job_id=derived_job_id(command, "notify", name, trigger),
            rule=name,
            trigger=trigger,
            details=details,
            series_uids=command.series_uids,
            completion_id=command.completion_id,
            tags=command.tags,
        )
        for name, rule in rules
        if rule is not None and wants(rule, trigger, details)
    ]
