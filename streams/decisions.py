"""Routing decisions: which rules match a completed series or study, and the commands that follow.

Pure functions of a completion fact and the `Configuration`; no I/O, no clock. Evaluation follows
mercure (`routing/route_series.py`): enabled rules in order; a matching `discard` rule wins and
stops evaluation; the fallback rule is evaluated only when no other rule matched; a
`talariaForceRule` or `mercureForceRule` tag names the one rule that applies, unevaluated.

What follows a decision, in order: one `RulesEvaluated`; then either one `SeriesDiscarded` per
series (nothing matched, or a discard rule matched) or the commands of the matching rules whose
level is due: one `DispatchSeries` per target (route rules choosing the same target share it), one
`ProcessSeries` per process/both rule with its module chain, one `Notify` per notification
trigger. Study-level rules matched by a series are listed as `deferred` and act when the study
completes. Commands travel in the lane of their rule's priority; job ids are derived from the
completion id, so deciding the same completion twice yields the same jobs.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from infra.catalogue import (
    BlobReference,
    Command,
    DispatchSeries,
    ModuleStep,
    Notify,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyCompleted,
    StudyDeferral,
    Tags,
)
from infra.events import Payload
from infra.topics import Lane
from streams import rules as rule_language
from streams.config import Configuration, Rule

FORCE_RULE_TAGS = ("talariaForceRule", "mercureForceRule")
_JOB_NAMESPACE = uuid.UUID("5b0f3c6e-8f51-4d7a-9a43-2f0d7a1c9e10")
_LANE_RANK = {Lane.URGENT: 0, Lane.NORMAL: 1, Lane.OFFPEAK: 2}


@dataclass(frozen=True, kw_only=True)
class Subject:
    """What a decision is about: one completed series, or the series of a completed study."""

    study_uid: str
    series_uid: str | None
    series_uids: list[str]
    completion_id: str
    blobs: list[BlobReference]
    tags: Tags

    @classmethod
    def of_series(cls, completed: SeriesCompleted) -> "Subject":
        return cls(
            study_uid=completed.study_uid,
            series_uid=completed.series_uid,
            series_uids=[completed.series_uid],
            completion_id=completed.completion_id,
            blobs=completed.blobs,
            tags=completed.tags,
        )

    @classmethod
    def of_study(cls, completed: StudyCompleted) -> "Subject":
        return cls(
            study_uid=completed.study_uid,
            series_uid=None,
            series_uids=completed.series_uids,
            completion_id=completed.completion_id,
            blobs=completed.blobs,
            tags=completed.tags,
        )

    def job_id(self, *parts: str) -> str:
        """A job id that is the same whenever this completion is decided again."""
        return str(uuid.uuid5(_JOB_NAMESPACE, "/".join((self.completion_id, *parts))))


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Which rules matched a tag snapshot, and why some could not be evaluated."""

    matched: list[str] = field(default_factory=list)
    fallback_used: bool = False
    forced_rule: str | None = None
    discarded_by: str | None = None
    errors: dict[str, str] = field(default_factory=dict)


def evaluate_rules(
    tags: Tags, config: Configuration, *, forced_rule: str | None = None
) -> Evaluation:
    """The rules matching `tags`, mercure's way; a forced rule (argument or tag) just applies."""
    forced = forced_rule or next((tags[tag] for tag in FORCE_RULE_TAGS if tags.get(tag)), None)
    if forced is not None:
        return _forced(forced, config)
    matched: list[str] = []
    errors: dict[str, str] = {}
    fallback: str | None = None
    for name, rule in config.rules.items():
        if rule.disabled:
            continue
        if rule.fallback:
            fallback = fallback or name
            continue
        if _matches(name, rule, tags, errors):
            matched.append(name)
            if rule.action == "discard":
                return Evaluation(matched=matched, discarded_by=name, errors=errors)
    if matched or fallback is None:
        return Evaluation(matched=matched, errors=errors)
    if not _matches(fallback, config.rules[fallback], tags, errors):
        return Evaluation(errors=errors)
    discard = config.rules[fallback].action == "discard"
    return Evaluation(
        matched=[fallback],
        fallback_used=True,
        discarded_by=fallback if discard else None,
        errors=errors,
    )


def _forced(name: str, config: Configuration) -> Evaluation:
    rule = config.rules.get(name)
    if rule is None:
        return Evaluation(forced_rule=name, errors={name: "forced rule does not exist"})
    return Evaluation(
        matched=[name],
        forced_rule=name,
        discarded_by=name if rule.action == "discard" else None,
    )


def _matches(name: str, rule: Rule, tags: Tags, errors: dict[str, str]) -> bool:
    outcome = rule_language.evaluate(rule.rule, tags)
    if outcome.error is not None:
        errors[name] = outcome.error
    return outcome.matched


def decide_series(
    completed: SeriesCompleted, config: Configuration, *, forced_rule: str | None = None
) -> list[Payload]:
    """Everything that follows the completion of a series, in the order it goes to the log."""
    subject = Subject.of_series(completed)
    evaluation = evaluate_rules(completed.tags, config, forced_rule=forced_rule)
    study_rules = [name for name in evaluation.matched if _study_level(config.rules[name])]
    series_rules = [name for name in evaluation.matched if name not in study_rules]
    if evaluation.discarded_by:
        series_rules, study_rules = [], []
    commands, problems = commands_for(subject, series_rules, config)
    deferred = [_deferral(name, config) for name in study_rules]
    evaluated = _evaluated(subject, evaluation, deferred=deferred, problems=problems)
    if evaluation.discarded_by or not evaluation.matched:
        return [evaluated, *_discarded(subject, evaluation.discarded_by)]
    return [evaluated, *commands]


def decide_study(completed: StudyCompleted, config: Configuration) -> list[Payload]:
    """Everything that follows the completion of a study-level rule's collection of series."""
    subject = Subject.of_study(completed)
    name = completed.rule or ""
    rule = config.rules.get(name)
    if rule is None:
        evaluation = Evaluation(errors={name: "rule no longer exists"})
        return [_evaluated(subject, evaluation), *_discarded(subject, None)]
    if completed.action == "discard" or rule.action == "discard":
        evaluation = Evaluation(matched=[name], discarded_by=name)
        return [_evaluated(subject, evaluation), *_discarded(subject, name)]
    commands, problems = commands_for(subject, [name], config)
    return [_evaluated(subject, Evaluation(matched=[name]), problems=problems), *commands]


def _study_level(rule: Rule) -> bool:
    return rule.action_trigger == "study" and rule.action != "discard"


def _deferral(name: str, config: Configuration) -> StudyDeferral:
    rule = config.rules[name]
    return StudyDeferral(
        rule=name,
        condition=rule.study_trigger_condition,
        required_series=rule.study_trigger_series,
        force_action=rule.study_force_completion_action,
    )


def _evaluated(
    subject: Subject,
    evaluation: Evaluation,
    *,
    deferred: Sequence[StudyDeferral] = (),
    problems: dict[str, str] | None = None,
) -> RulesEvaluated:
    return RulesEvaluated(
        study_uid=subject.study_uid,
        series_uid=subject.series_uid,
        completion_id=subject.completion_id,
        matched_rules=evaluation.matched,
        fallback_used=evaluation.fallback_used,
        forced_rule=evaluation.forced_rule,
        discarded_by=evaluation.discarded_by,
        deferred=list(deferred),
        errors={**evaluation.errors, **(problems or {})},
    )


def _discarded(subject: Subject, rule: str | None) -> list[SeriesDiscarded]:
    reason = f"discarded by rule {rule}" if rule else "no rule matched"
    return [
        SeriesDiscarded(study_uid=subject.study_uid, series_uid=uid, reason=reason, rule=rule)
        for uid in subject.series_uids
    ]


def commands_for(
    subject: Subject, rule_names: Sequence[str], config: Configuration
) -> tuple[list[Command], dict[str, str]]:
    """The commands of the rules acting on `subject`, and problems that left some out."""
    problems: dict[str, str] = {}
    rules = {name: config.rules[name] for name in rule_names}
    commands: list[Command] = [
        *_dispatches(subject, rules, config, problems),
        *_processing(subject, rules, config, problems),
        *_notifications(subject, rules),
    ]
    return commands, problems


def _dispatches(
    subject: Subject, rules: dict[str, Rule], config: Configuration, problems: dict[str, str]
) -> list[DispatchSeries]:
    chosen_by: dict[str, list[str]] = {}
    for name, rule in rules.items():
        if rule.action != "route":
            continue
        for target in rule.target:
            if target in config.targets:
                chosen_by.setdefault(target, []).append(name)
            else:
                problems[name] = f"target {target!r} does not exist"
    return [
        DispatchSeries(
            study_uid=subject.study_uid,
            lane=min((rules[name].lane for name in names), key=_LANE_RANK.__getitem__),
            job_id=subject.job_id("dispatch", target),
            rule=names[0],
            rules=names,
            target=target,
            series_uids=subject.series_uids,
            inputs=subject.blobs,
            tags=subject.tags,
            completion_id=subject.completion_id,
        )
        for target, names in chosen_by.items()
    ]


def _processing(
    subject: Subject, rules: dict[str, Rule], config: Configuration, problems: dict[str, str]
) -> list[ProcessSeries]:
    jobs = []
    for name, rule in rules.items():
        if rule.action not in ("process", "both"):
            continue
        missing = [module for module in rule.processing_module if module not in config.modules]
        missing_targets = [target for target in rule.target if target not in config.targets]
        if missing or (rule.action == "both" and missing_targets):
            problems[name] = f"does not exist: {', '.join(missing + missing_targets)}"
            continue
        jobs.append(
            ProcessSeries(
                study_uid=subject.study_uid,
                lane=rule.lane,
                job_id=subject.job_id("process", name),
                rule=name,
                series_uids=subject.series_uids,
                steps=[
                    ModuleStep(module=step, settings=rule.module_settings(i, config.modules[step]))
                    for i, step in enumerate(rule.processing_module)
                ],
                inputs=subject.blobs,
                dispatch_targets=rule.target if rule.action == "both" else [],
                retain_input_images=rule.processing_retain_images,
                completion_id=subject.completion_id,
                tags=subject.tags,
            )
        )
    return jobs


def _notifications(subject: Subject, rules: dict[str, Rule]) -> list[Notify]:
    return [
        Notify(
            study_uid=subject.study_uid,
            lane=rule.lane,
            job_id=subject.job_id("notify", name, trigger),
            rule=name,
            trigger=trigger,
            series_uids=subject.series_uids,
            completion_id=subject.completion_id,
            tags=subject.tags,
        )
        for name, rule in rules.items()
        if rule.notifies
        for trigger in _triggers_at_decision(rule)
    ]


def _triggers_at_decision(rule: Rule) -> list[str]:
    """Notification triggers that fire when the decision is taken (as mercure: reception for
    every acting rule; completion too for a notification-only rule, which has no job to finish)."""
    triggers = ["reception"] if rule.notification_trigger_reception else []
    if rule.action == "notification" and rule.notification_trigger_completion:
        triggers.append("completion")
    return triggers


def subject_of(payload: Payload) -> str:
    """The envelope subject of a decision: a command's job, else its series or study."""
    if isinstance(payload, Command):
        return str(payload.job_id)  # type: ignore[attr-defined]
    series_uid = getattr(payload, "series_uid", None)
    return str(series_uid or getattr(payload, "study_uid", ""))
