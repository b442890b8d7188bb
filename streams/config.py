"""Routing configuration: rules, targets, modules and settings, folded from config events.

Configuration is data on the log (`RuleSaved`, `TargetSaved`, `ModuleSaved`, `SettingsSaved` and
their `...Deleted` twins, each with the full `after` value). `fold` turns one event into the next
`Configuration`; rules keep the order in which they were first saved, which is the order they are
evaluated in (as mercure's dict of rules). Field names follow mercure's configuration so that a
`mercure.json` imports without renaming.

`ConfigDocument` is the file format of `talaria config apply` (YAML or JSON with the sections
`rules`, `targets`, `modules`, `settings`); `validate` refuses a document whose rules name a target
or module that does not exist or do not parse; `changes` turns it into the config events that
make the log say what the file says; `from_mercure` converts a mercure configuration.

Errors: `ConfigInvalid` (permanent) with every problem found, one per line.
"""

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infra.catalogue import (
    ConfigChanged,
    ModuleDeleted,
    ModuleSaved,
    RuleDeleted,
    RuleSaved,
    SettingsSaved,
    TargetDeleted,
    TargetSaved,
)
from infra.errors import PermanentError
from infra.events import Envelope
from infra.topics import Lane
from streams import rules as rule_language

log = structlog.get_logger(__name__)

JsonObject = dict[str, Any]
Action = Literal["route", "both", "process", "discard", "notification"]
Priority = Literal["normal", "urgent", "offpeak"]

SETTINGS_NAME = "routing"
"""The `name` of the one `SettingsSaved` record that holds the routing settings."""

LANES: Mapping[Priority, Lane] = {
    "urgent": Lane.URGENT,
    "normal": Lane.NORMAL,
    "offpeak": Lane.OFFPEAK,
}


class ConfigInvalid(PermanentError):
    """A configuration document (or mercure file) that cannot be applied."""


def _listed(value: object) -> object:
    """mercure allows one name or a list of names; an empty string means none."""
    if isinstance(value, str):
        return [value] if value else []
    return value


class Rule(BaseModel):
    """A routing rule, with mercure's field names and defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str = "False"
    action: Action = "route"
    action_trigger: Literal["series", "study"] = "series"
    study_trigger_condition: Literal["timeout", "received_series"] = "timeout"
    study_trigger_series: str = ""
    study_force_completion_action: Literal["discard", "proceed", "ignore"] = "discard"
    target: list[str] = Field(default_factory=list)
    processing_module: list[str] = Field(default_factory=list)
    processing_settings: list[JsonObject] | JsonObject = Field(default_factory=dict)
    processing_retain_images: bool = False
    priority: Priority = "normal"
    fallback: bool = False
    disabled: bool = False
    notification_email: str = ""
    notification_webhook: str = ""
    notification_payload: str = ""
    notification_payload_body: str = ""
    notification_email_body: str = ""
    notification_email_type: str = "plain"
    notification_trigger_reception: bool = True
    notification_trigger_completion: bool = True
    notification_trigger_completion_on_request: bool = False
    notification_trigger_error: bool = True
    dynamic_routing: bool = False
    dynamic_routing_allowed_targets: list[str] = Field(default_factory=list)
    contact: str = ""
    comment: str = ""
    tags: str = ""

    _as_list = field_validator(
        "target", "processing_module", "dynamic_routing_allowed_targets", mode="before"
    )(_listed)

    @property
    def lane(self) -> Lane:
        return LANES[self.priority]

    @property
    def notifies(self) -> bool:
        """Whether the rule has somewhere to send notifications."""
        return bool(self.notification_email or self.notification_webhook)

    def module_settings(self, index: int, module: "Module | None") -> JsonObject:
        """Settings of the `index`-th module of the chain: module's, overridden by the rule's."""
        merged = dict(module.settings) if module is not None else {}
        if isinstance(self.processing_settings, list):
            if index < len(self.processing_settings):
                merged.update(self.processing_settings[index])
        else:
            merged.update(self.processing_settings)
        return merged


class Target(BaseModel):
    """A dispatch target; its type-specific fields belong to the dispatcher."""

    model_config = ConfigDict(frozen=True, extra="allow")

    target_type: str
    contact: str = ""
    comment: str = ""


def _json_text(value: object) -> object:
    """mercure stores a module's environment, arguments and volumes as JSON text."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return value


class Module(BaseModel):
    """A processing module (a mercure-compatible container image) and its default settings.

    The container fields follow mercure's; `runtime` (e.g. "nvidia" for a GPU), `memory_limit`
    (docker's "2g"), `cpu_limit` (cores) and `timeout_s` are Talaria's per-module limits.
    Unlike mercure, a module has no network unless `network_enabled` says so.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    docker_tag: str = ""
    settings: JsonObject = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    docker_arguments: JsonObject = Field(default_factory=dict)
    additional_volumes: dict[str, JsonObject] = Field(default_factory=dict)
    requires_root: bool = False
    network_enabled: bool = False
    runtime: str | None = None
    memory_limit: str | None = None
    cpu_limit: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)

    _from_json = field_validator(
        "environment", "docker_arguments", "additional_volumes", mode="before"
    )(_json_text)


class RoutingSettings(BaseModel):
    """Completion timeouts (seconds, as mercure) and other global routing settings."""

    model_config = ConfigDict(frozen=True, extra="allow")

    series_complete_trigger: float = Field(default=60.0, gt=0)
    study_complete_trigger: float = Field(default=900.0, gt=0)
    study_forcecomplete_trigger: float = Field(default=5400.0, gt=0)


@dataclass(frozen=True, kw_only=True)
class Configuration:
    """Everything a decision needs to know about the installation's routing."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    targets: Mapping[str, Target] = field(default_factory=dict)
    modules: Mapping[str, Module] = field(default_factory=dict)
    settings: RoutingSettings = field(default_factory=RoutingSettings)


_SECTIONS: Mapping[type[ConfigChanged], tuple[str, type[BaseModel] | None]] = {
    RuleSaved: ("rules", Rule),
    RuleDeleted: ("rules", None),
    TargetSaved: ("targets", Target),
    TargetDeleted: ("targets", None),
    ModuleSaved: ("modules", Module),
    ModuleDeleted: ("modules", None),
}


def fold(config: Configuration, change: ConfigChanged) -> Configuration:
    """The configuration after `change`; an invalid change is logged and leaves it as it was."""
    if isinstance(change, SettingsSaved):
        if change.name != SETTINGS_NAME:
            return config
        return _folded(config, change, lambda: replace(config, settings=_settings(change)))
    if type(change) not in _SECTIONS:
        return config  # users and other config kinds are not routing configuration
    section, model = _SECTIONS[type(change)]

    def changed() -> Configuration:
        entries: dict[str, Any] = dict(getattr(config, section))
        if model is None:
            entries.pop(change.name, None)
        else:
            entries[change.name] = model.model_validate(change.after or {})
        return replace(config, **{section: entries})  # type: ignore[arg-type]

    return _folded(config, change, changed)


def _settings(change: SettingsSaved) -> RoutingSettings:
    return RoutingSettings.model_validate(change.after or {})


def _folded(
    config: Configuration, change: ConfigChanged, apply: Callable[[], Configuration]
) -> Configuration:
    try:
        return apply()
    except ValidationError as error:
        log.warning(
            "invalid config event ignored", type=change.TYPE, name=change.name, error=str(error)
        )
        return config


def fold_all(
    changes: Iterable[ConfigChanged], config: Configuration | None = None
) -> Configuration:
    """The configuration after every change in order."""
    current = config or Configuration()
    for change in changes:
        current = fold(current, change)
    return current


# --- documents: `talaria config apply` and `import-mercure` -----------------------------------


class ConfigDocument(BaseModel):
    """The file format of `talaria config apply`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: dict[str, Rule] = Field(default_factory=dict)
    targets: dict[str, Target] = Field(default_factory=dict)
    modules: dict[str, Module] = Field(default_factory=dict)
    settings: RoutingSettings | None = None


def parse_document(data: object) -> ConfigDocument:
    """A validated document from parsed YAML/JSON; `ConfigInvalid` names each bad field."""
    try:
        return ConfigDocument.model_validate(data)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}"
            for issue in error.errors()
        ]
        raise ConfigInvalid("\n".join(problems)) from error


def validate(document: ConfigDocument, current: Configuration) -> None:
    """Refuse a document that would leave rules pointing at nothing or not parsing."""
    targets = {**current.targets, **document.targets}
    modules = {**current.modules, **document.modules}
    problems: list[str] = []
    for name, rule in document.rules.items():
        problems += [
            f"rule {name!r}: target {target!r} does not exist"
            for target in rule.target
            if target not in targets
        ]
        problems += [
            f"rule {name!r}: module {module!r} does not exist"
            for module in rule.processing_module
            if module not in modules
        ]
        if (syntax := rule_language.check(rule.rule)) is not None:
            problems.append(f"rule {name!r}: {syntax}")
        problems += _action_problems(name, rule)
    if problems:
        raise ConfigInvalid("\n".join(problems))


def _action_problems(name: str, rule: Rule) -> list[str]:
    problems = []
    if rule.action in ("route", "both") and not rule.target:
        problems.append(f"rule {name!r}: action {rule.action!r} needs a target")
    if rule.action in ("process", "both") and not rule.processing_module:
        problems.append(f"rule {name!r}: action {rule.action!r} needs a processing module")
    by_series = rule.action_trigger == "study" and rule.study_trigger_condition == "received_series"
    expression = rule.study_trigger_series
    problem = rule_language.check_completion_series(expression) if by_series else None
    if problem is not None:
        problems.append(f"rule {name!r}: study_trigger_series: {problem}")
    return problems


def changes(
    document: ConfigDocument, current: Configuration, *, actor: str, source: str
) -> list[Envelope]:
    """Config events that make the log hold what `document` says (unchanged entries skipped)."""
    saved: list[ConfigChanged] = []
    for kind, section in (
        (TargetSaved, "targets"),
        (ModuleSaved, "modules"),
        (RuleSaved, "rules"),
    ):
        existing: Mapping[str, BaseModel] = getattr(current, section)
        for name, entry in getattr(document, section).items():
            before = existing.get(name)
            if before != entry:
                saved.append(kind(name=name, before=_dump(before), after=_dump(entry)))
    if document.settings is not None and document.settings != current.settings:
        saved.append(
            SettingsSaved(
                name=SETTINGS_NAME,
                before=_dump(current.settings),
                after=_dump(document.settings),
            )
        )
    return [
        Envelope(payload=payload, source=source, subject=payload.partition_key(), actor=actor)
        for payload in saved
    ]


def _dump(entry: BaseModel | None) -> JsonObject | None:
    return None if entry is None else entry.model_dump(mode="json", exclude_defaults=True)


_MERCURE_SETTINGS = (
    "series_complete_trigger",
    "study_complete_trigger",
    "study_forcecomplete_trigger",
    "offpeak_start",
    "offpeak_end",
)


def from_mercure(mercure: Mapping[str, Any]) -> tuple[ConfigDocument, list[str]]:
    """A document from a mercure configuration, and notes about what was left out."""
    notes: list[str] = []
    rule_fields = set(Rule.model_fields)
    rules: JsonObject = {}
    for name, rule in (mercure.get("rules") or {}).items():
        dropped = sorted(set(rule) - rule_fields)
        if dropped:
            notes.append(f"rule {name!r}: not imported: {', '.join(dropped)}")
        rules[name] = {key: value for key, value in rule.items() if key in rule_fields}
    settings = {key: mercure[key] for key in _MERCURE_SETTINGS if key in mercure}
    document = parse_document(
        {
            "rules": rules,
            "targets": mercure.get("targets") or {},
            "modules": mercure.get("modules") or {},
            "settings": settings or None,
        }
    )
    return document, notes
