"""Routing decisions, decided without Kafka: every action, fallback, discard, force, lanes."""

from typing import Any

from infra.catalogue import (
    BlobReference,
    DispatchSeries,
    Notify,
    ProcessSeries,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
    StudyCompleted,
)
from infra.topics import Lane
from streams.config import Configuration, Module, Rule, Target
from streams.decisions import decide_series, decide_study


def config(**rules: dict[str, Any]) -> Configuration:
    return Configuration(
        rules={name: Rule.model_validate(fields) for name, fields in rules.items()},
        targets={name: Target(target_type="dummy") for name in ("pacs", "archive", "research")},
        modules={
            "anon": Module(docker_tag="anon:1", settings={"mode": "basic", "keep": "dates"}),
            "seg": Module(docker_tag="seg:2", settings={"threshold": 0.5}),
        },
    )


def series(**tags: str) -> SeriesCompleted:
    return SeriesCompleted(
        study_uid="1.2",
        series_uid="1.2.3",
        completion_id="c-1",
        instance_count=2,
        blobs=[BlobReference(key=f"1.2/1.2.3/{n}.dcm", size=10, sha256="0" * 64) for n in range(2)],
        tags={"Modality": "CT", "SeriesDescription": "Head", **tags},
    )


def of(kind: type, payloads: list) -> list:  # type: ignore[type-arg]
    return [p for p in payloads if isinstance(p, kind)]


def test_a_route_rule_sends_the_series_to_each_of_its_targets() -> None:
    decided = decide_series(
        series(), config(ct={"rule": "@Modality@ == 'CT'", "target": ["pacs", "archive"]})
    )
    assert isinstance(decided[0], RulesEvaluated)
    assert decided[0].matched_rules == ["ct"]
    dispatches = of(DispatchSeries, decided)
    assert [d.target for d in dispatches] == ["pacs", "archive"]
    assert all(d.series_uids == ["1.2.3"] and len(d.inputs) == 2 for d in dispatches)
    assert all(d.lane is Lane.NORMAL and d.completion_id == "c-1" for d in dispatches)


def test_two_route_rules_choosing_the_same_target_share_one_dispatch_in_the_faster_lane() -> None:
    decided = decide_series(
        series(),
        config(
            slow={"rule": "True", "target": "pacs", "priority": "offpeak"},
            fast={"rule": "True", "target": ["pacs", "research"], "priority": "urgent"},
        ),
    )
    dispatches = {d.target: d for d in of(DispatchSeries, decided)}
    assert set(dispatches) == {"pacs", "research"}
    assert dispatches["pacs"].rules == ["slow", "fast"]
    assert dispatches["pacs"].lane is Lane.URGENT


def test_a_process_rule_runs_its_module_chain_with_rule_settings_over_module_settings() -> None:
    decided = decide_series(
        series(),
        config(
            ai={
                "rule": "True",
                "action": "both",
                "target": "pacs",
                "processing_module": ["anon", "seg"],
                "processing_settings": [{"keep": "none"}, {"threshold": 0.9}],
                "processing_retain_images": True,
                "priority": "urgent",
            }
        ),
    )
    (job,) = of(ProcessSeries, decided)
    assert [(s.module, s.settings) for s in job.steps] == [
        ("anon", {"mode": "basic", "keep": "none"}),
        ("seg", {"threshold": 0.9}),
    ]
    assert job.dispatch_targets == ["pacs"]
    assert job.retain_input_images
    assert job.lane is Lane.URGENT
    assert not of(DispatchSeries, decided), "a 'both' rule dispatches what processing made"


def test_one_settings_object_applies_to_every_module_of_the_chain() -> None:
    decided = decide_series(
        series(),
        config(
            ai={
                "rule": "True",
                "action": "process",
                "processing_module": "anon",
                "processing_settings": {"x": 1},
            }
        ),
    )
    (job,) = of(ProcessSeries, decided)
    assert job.steps[0].settings == {"mode": "basic", "keep": "dates", "x": 1}


def test_a_notification_rule_notifies_reception_and_completion_when_it_has_a_channel() -> None:
    decided = decide_series(
        series(),
        config(
            tell={"rule": "True", "action": "notification", "notification_webhook": "http://hook"},
            mute={"rule": "True", "action": "notification"},
        ),
    )
    assert [(n.rule, n.trigger) for n in of(Notify, decided)] == [
        ("tell", "reception"),
        ("tell", "completion"),
    ]
    assert not of(SeriesDiscarded, decided)


def test_a_matching_discard_rule_wins_and_stops_evaluation() -> None:
    decided = decide_series(
        series(),
        config(
            route={"rule": "True", "target": "pacs"},
            drop={"rule": "@Modality@ == 'CT'", "action": "discard"},
            never={"rule": "1/0"},
        ),
    )
    evaluated = decided[0]
    assert isinstance(evaluated, RulesEvaluated)
    assert evaluated.matched_rules == ["route", "drop"]
    assert evaluated.discarded_by == "drop"
    assert evaluated.errors == {}, "evaluation stopped before the broken rule"
    (discarded,) = of(SeriesDiscarded, decided)
    assert discarded.rule == "drop"
    assert not of(DispatchSeries, decided)


def test_nothing_matched_discards_the_series_and_reports_rule_errors() -> None:
    decided = decide_series(
        series(), config(mr={"rule": "@Modality@ == 'MR'"}, broken={"rule": "int('x')"})
    )
    evaluated = decided[0]
    assert isinstance(evaluated, RulesEvaluated)
    assert evaluated.matched_rules == []
    assert "broken" in evaluated.errors
    (discarded,) = of(SeriesDiscarded, decided)
    assert discarded.reason == "no rule matched"


def test_the_fallback_rule_applies_only_when_no_other_rule_matched() -> None:
    rules = {
        "mr": {"rule": "@Modality@ == 'MR'", "target": "pacs"},
        "rest": {"rule": "True", "target": "archive", "fallback": True},
    }
    unmatched = decide_series(series(), config(**rules))
    assert [d.target for d in of(DispatchSeries, unmatched)] == ["archive"]
    assert isinstance(unmatched[0], RulesEvaluated)
    assert unmatched[0].fallback_used
    matched = decide_series(series(Modality="MR"), config(**rules))
    assert [d.target for d in of(DispatchSeries, matched)] == ["pacs"]


def test_disabled_rules_are_skipped() -> None:
    decided = decide_series(
        series(), config(off={"rule": "True", "target": "pacs", "disabled": True})
    )
    assert of(SeriesDiscarded, decided)


def test_a_force_rule_tag_applies_that_rule_without_evaluating_any() -> None:
    rules = {
        "ct": {"rule": "True", "target": "pacs"},
        "research": {"rule": "False", "target": "research"},
    }
    for tag in ("talariaForceRule", "mercureForceRule"):
        decided = decide_series(series(**{tag: "research"}), config(**rules))
        assert [d.target for d in of(DispatchSeries, decided)] == ["research"]
        assert isinstance(decided[0], RulesEvaluated)
        assert decided[0].forced_rule == "research"
    unknown = decide_series(series(talariaForceRule="gone"), config(**rules))
    assert of(SeriesDiscarded, unknown)
    assert isinstance(unknown[0], RulesEvaluated)
    assert "gone" in unknown[0].errors


def test_a_study_rule_defers_the_series_to_its_study() -> None:
    decided = decide_series(
        series(),
        config(
            study={
                "rule": "True",
                "target": "pacs",
                "action_trigger": "study",
                "study_trigger_condition": "received_series",
                "study_trigger_series": "'Head'",
                "study_force_completion_action": "proceed",
            },
        ),
    )
    (evaluated,) = decided
    assert isinstance(evaluated, RulesEvaluated)
    assert [
        (d.rule, d.condition, d.required_series, d.force_action) for d in evaluated.deferred
    ] == [("study", "received_series", "'Head'", "proceed")]


def study(**fields: Any) -> StudyCompleted:
    return StudyCompleted.model_validate(
        {
            "study_uid": "1.2",
            "completion_id": "s-1",
            "series_uids": ["1.2.3", "1.2.4"],
            "reason": "timeout",
            "rule": "study",
            "series_completions": ["c-1", "c-2"],
            "blobs": [{"key": f"k{n}", "size": 1, "sha256": "0" * 64} for n in range(3)],
            "tags": {"Modality": "MR"},
            **fields,
        }
    )


def test_a_completed_study_is_dispatched_as_one_job_per_target() -> None:
    rules = config(study={"rule": "True", "target": ["pacs", "archive"], "action_trigger": "study"})
    decided = decide_study(study(), rules)
    dispatches = of(DispatchSeries, decided)
    assert [d.target for d in dispatches] == ["pacs", "archive"]
    assert all(d.series_uids == ["1.2.3", "1.2.4"] and len(d.inputs) == 3 for d in dispatches)


def test_a_study_forced_to_complete_with_discard_discards_each_series() -> None:
    rules = config(study={"rule": "True", "target": "pacs", "action_trigger": "study"})
    decided = decide_study(study(reason="forced", action="discard"), rules)
    assert [d.series_uid for d in of(SeriesDiscarded, decided)] == ["1.2.3", "1.2.4"]
    assert not of(DispatchSeries, decided)


def test_deciding_a_completion_again_gives_the_same_job_ids() -> None:
    rules = config(
        ct={"rule": "True", "target": "pacs", "action": "both", "processing_module": "anon"}
    )
    first = [getattr(p, "job_id", None) for p in decide_series(series(), rules)]
    again = [getattr(p, "job_id", None) for p in decide_series(series(), rules)]
    assert first == again
