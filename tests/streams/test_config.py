"""Configuration folded from config events, validated documents, and mercure's import."""

import pytest

from infra.catalogue import RuleDeleted, RuleSaved, SettingsSaved, TargetSaved
from streams.config import (
    SETTINGS_NAME,
    ConfigInvalid,
    Configuration,
    changes,
    fold_all,
    from_mercure,
    parse_document,
    validate,
)


def test_rules_keep_the_order_they_were_first_saved_in_and_changes_replace_them() -> None:
    config = fold_all(
        [
            RuleSaved(name="b", after={"rule": "True"}),
            RuleSaved(name="a", after={"rule": "False"}),
            TargetSaved(name="pacs", after={"target_type": "dicom", "ip": "10.0.0.1"}),
            RuleSaved(name="b", after={"rule": "@Modality@ == 'CT'", "target": "pacs"}),
            SettingsSaved(name=SETTINGS_NAME, after={"series_complete_trigger": 5}),
        ]
    )
    assert list(config.rules) == ["b", "a"]
    assert config.rules["b"].target == ["pacs"]
    assert config.settings.series_complete_trigger == 5
    assert config.settings.study_complete_trigger == 900
    assert list(fold_all([RuleDeleted(name="b")], config).rules) == ["a"]


def test_an_invalid_config_event_is_ignored() -> None:
    config = fold_all([RuleSaved(name="r", after={"action": "teleport"})])
    assert config == Configuration()


def test_a_document_naming_a_missing_target_or_module_or_bad_syntax_is_refused() -> None:
    document = parse_document(
        {
            "rules": {
                "ct": {"rule": "@Modality@ == 'CT'", "target": "nowhere"},
                "ai": {"rule": "True", "action": "process", "processing_module": "ghost"},
                "bad": {"rule": "__import__('os')", "target": "pacs"},
                "study": {
                    "rule": "True",
                    "target": "pacs",
                    "action_trigger": "study",
                    "study_trigger_condition": "received_series",
                    "study_trigger_series": "'A' and (",
                },
            },
            "targets": {"pacs": {"target_type": "dicom"}},
        }
    )
    with pytest.raises(ConfigInvalid) as refused:
        validate(document, Configuration())
    message = str(refused.value)
    assert "rule 'ct': target 'nowhere' does not exist" in message
    assert "rule 'ai': module 'ghost' does not exist" in message
    assert "rule 'bad'" in message
    assert "rule 'study': study_trigger_series" in message


def test_applying_a_document_saves_only_what_changed_with_before_and_after() -> None:
    current = fold_all([TargetSaved(name="pacs", after={"target_type": "dicom"})])
    document = parse_document(
        {
            "targets": {"pacs": {"target_type": "dicom"}},
            "rules": {"ct": {"rule": "True", "target": "pacs"}},
            "settings": {"series_complete_trigger": 30},
        }
    )
    validate(document, current)
    events = changes(document, current, actor="alice", source="cli")
    assert [e.type for e in events] == ["RuleSaved", "SettingsSaved"]
    assert all(e.actor == "alice" for e in events)
    rule = events[0].payload
    assert isinstance(rule, RuleSaved)
    assert (rule.before, rule.after) == (None, {"rule": "True", "target": ["pacs"]})


def test_a_mercure_configuration_becomes_a_document() -> None:
    mercure = {
        "series_complete_trigger": 45,
        "study_complete_trigger": 600,
        "study_forcecomplete_trigger": 3600,
        "offpeak_start": "22:00",
        "port": 11112,
        "targets": {
            "pacs": {"target_type": "dicom", "ip": "1.2.3.4", "port": "104", "aet_target": "PACS"}
        },
        "modules": {"anon": {"docker_tag": "mercure/anon:latest", "settings": {"x": 1}}},
        "rules": {
            "ct": {
                "rule": "@Modality@ == 'CT'",
                "action": "both",
                "target": "pacs",
                "processing_module": "anon",
                "priority": "urgent",
                "conditional_alternate_target": "archive",
            }
        },
    }
    document, notes = from_mercure(mercure)
    validate(document, Configuration())
    assert document.rules["ct"].processing_module == ["anon"]
    assert document.targets["pacs"].model_dump()["aet_target"] == "PACS"
    assert document.settings is not None
    assert document.settings.series_complete_trigger == 45
    assert notes == ["rule 'ct': not imported: conditional_alternate_target"]
