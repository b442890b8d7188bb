"""Saving and deleting rules, targets and modules as config events, one code path for all three.

A save is validated as `talaria config apply` validates a document (`streams.config.validate`
plus the kind's own check), turned into events by `streams.config.changes` with the user as
actor, published, and awaited in the view so the next page shows it.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import HTTPException, Path
from pydantic import BaseModel

from infra.catalogue import ConfigChanged, ModuleDeleted, RuleDeleted, TargetDeleted
from infra.errors import PermanentError
from infra.events import Envelope
from streams.config import ConfigDocument, Configuration, changes, validate
from ui.services import Services
from ui.users import User

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"
ConfigName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="Name of the rule, target or module.")
]


@dataclass(frozen=True, kw_only=True)
class ConfigKind:
    section: str  # "rules", "targets" or "modules" (of Configuration and ConfigDocument)
    noun: str
    deleted: type[ConfigChanged]
    check: Callable[[BaseModel], None] = lambda _entry: None
    used_by: Callable[[Configuration, str], list[str]] = lambda _config, _name: []

    def entries(self, config: Configuration) -> Mapping[str, Any]:
        entries: Mapping[str, Any] = getattr(config, self.section)
        return entries


def _rules_using(field: str) -> Callable[[Configuration, str], list[str]]:
    def using(config: Configuration, name: str) -> list[str]:
        return [rule for rule, entry in config.rules.items() if name in getattr(entry, field)]

    return using


RULES = ConfigKind(section="rules", noun="rule", deleted=RuleDeleted)
TARGETS = ConfigKind(
    section="targets", noun="target", deleted=TargetDeleted, used_by=_rules_using("target")
)
MODULES = ConfigKind(
    section="modules",
    noun="module",
    deleted=ModuleDeleted,
    used_by=_rules_using("processing_module"),
)


def entry_or_404(services: Services, kind: ConfigKind, name: str) -> Any:
    entry = kind.entries(services.view.config).get(name)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"no {kind.noun} named {name!r}")
    return entry


def save(
    services: Services,
    kind: ConfigKind,
    *,
    name: str,
    entry: BaseModel,
    user: User,
    creating: bool,
) -> None:
    """Publish the `...Saved` event that makes `name` hold `entry` (422 if invalid)."""
    config = services.view.config
    exists = name in kind.entries(config)
    if creating and exists:
        raise HTTPException(status_code=409, detail=f"a {kind.noun} named {name!r} exists")
    if not creating and not exists:
        raise HTTPException(status_code=404, detail=f"no {kind.noun} named {name!r}")
    document = ConfigDocument.model_validate({kind.section: {name: entry}})
    try:
        validate(document, config)
        kind.check(entry)
    except PermanentError as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    services.publish(changes(document, config, actor=user.name, source=services.source))
    services.view.settle(lambda: kind.entries(services.view.config).get(name) == entry)


def delete(services: Services, kind: ConfigKind, *, name: str, user: User) -> None:
    """Publish the `...Deleted` event (409 while a rule still uses it)."""
    entry: BaseModel = entry_or_404(services, kind, name)
    if users := kind.used_by(services.view.config, name):
        raise HTTPException(
            status_code=409, detail=f"{kind.noun} {name!r} is used by rules: {', '.join(users)}"
        )
    payload = kind.deleted(
        name=name, before=entry.model_dump(mode="json", exclude_defaults=True), after=None
    )
    services.publish(
        [
            Envelope(
                payload=payload,
                source=services.source,
                subject=payload.partition_key(),
                actor=user.name,
            )
        ]
    )
    services.view.settle(lambda: name not in kind.entries(services.view.config))
