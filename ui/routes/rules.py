"""Rules: list, editor with every option, the rule tester, the tag list, the completion checker."""

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ingest.errors import CannotUnderstand
from ingest.part10 import read_file_meta
from ingest.tags import ROUTING_TAGS, TagReader
from streams import rules as rule_language
from streams.config import Rule
from ui import config_edit
from ui.config_edit import RULES, ConfigName
from ui.deps import Admin, ServicesDep, Viewer
from ui.forms import form_fields
from ui.pages import render

router = APIRouter()
_TAG_READER = TagReader()
MAX_TEST_FILE_BYTES = 64 * 1024**2


class RuleCreate(Rule):
    name: str = Field(pattern=config_edit.NAME_PATTERN)


class RulePublic(Rule):
    name: str
    reads_tags: list[str] = Field(description="Tags the rule's expression reads.")


class RuleTest(BaseModel):
    rule: str = Field(max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=1000)


class RuleTestResult(BaseModel):
    outcome: str = Field(description="match, no match or error")
    matched: bool
    error: str | None
    summary: str


class CompletionCheck(BaseModel):
    expression: str = Field(max_length=10_000)
    descriptions: list[str] = Field(default_factory=list, max_length=1000)


class CompletionResult(BaseModel):
    problem: str | None
    met: bool | None
    summary: str


class FileTags(BaseModel):
    tags: dict[str, str]


def _public(name: str, rule: Rule) -> RulePublic:
    reads = sorted(rule_language.referenced_tags(rule.rule))
    return RulePublic(name=name, reads_tags=reads, **rule.model_dump())


def _rule_body(body: Rule) -> Rule:
    return Rule.model_validate(body.model_dump(exclude={"name"}))


# --- API -----------------------------------------------------------------------------------------


@router.get("/api/rules", tags=["rules"])
def list_rules(services: ServicesDep, _user: Viewer) -> list[RulePublic]:
    """Every rule, in evaluation order."""
    return [_public(name, rule) for name, rule in services.view.config.rules.items()]


@router.get("/api/rules/{name}", tags=["rules"])
def read_rule(name: ConfigName, services: ServicesDep, _user: Viewer) -> RulePublic:
    return _public(name, config_edit.entry_or_404(services, RULES, name))


@router.post("/api/rules", status_code=201, tags=["rules"])
def create_rule(body: RuleCreate, services: ServicesDep, user: Admin) -> RulePublic:
    """Publish `RuleSaved` for a new rule."""
    rule = _rule_body(body)
    config_edit.save(services, RULES, name=body.name, entry=rule, user=user, creating=True)
    return _public(body.name, rule)


@router.put("/api/rules/{name}", tags=["rules"])
def update_rule(name: ConfigName, body: Rule, services: ServicesDep, user: Admin) -> RulePublic:
    """Publish `RuleSaved` with the rule's before and after."""
    config_edit.save(services, RULES, name=name, entry=body, user=user, creating=False)
    return _public(name, body)


@router.delete("/api/rules/{name}", status_code=204, tags=["rules"])
def delete_rule(name: ConfigName, services: ServicesDep, user: Admin) -> None:
    config_edit.delete(services, RULES, name=name, user=user)


@router.post("/api/rules-test", tags=["rules"])
def try_rule(body: RuleTest, _user: Viewer) -> RuleTestResult:
    """Evaluate a rule against tag values: match, no match, or the error."""
    outcome = rule_language.evaluate(body.rule, body.tags)
    if outcome.error is not None:
        word, summary = "error", f"Error: {outcome.error}"
    else:
        word = "match" if outcome.matched else "no match"
        summary = "Match" if outcome.matched else "No match"
    return RuleTestResult(
        outcome=word, matched=outcome.matched, error=outcome.error, summary=summary
    )


@router.post("/api/rules-test/file-tags", tags=["rules"])
def tags_of_file(
    file: Annotated[bytes, File(max_length=MAX_TEST_FILE_BYTES)], _user: Viewer
) -> FileTags:
    """The routing tags of an uploaded DICOM file, as a rule would see them."""
    try:
        meta = read_file_meta(file)
        snapshot = _TAG_READER.read(
            file[meta.dataset_offset :],
            transfer_syntax_uid=meta.transfer_syntax_uid,
            media_sop_class_uid=meta.sop_class_uid,
        )
    except CannotUnderstand as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    return FileTags(tags=snapshot.tags)


@router.get("/api/tags", tags=["rules"])
def list_tags(_user: Viewer) -> list[str]:
    """The tags every series carries for rules (plus any configured extra tags)."""
    return list(ROUTING_TAGS)


@router.post("/api/rules-test/completion", tags=["rules"])
def check_completion(body: CompletionCheck, _user: Viewer) -> CompletionResult:
    """Check a study completion expression, and whether these series descriptions meet it."""
    problem = rule_language.check_completion_series(body.expression)
    if problem is not None:
        return CompletionResult(problem=problem, met=None, summary=f"Error: {problem}")
    met = rule_language.completion_series_met(body.expression, body.descriptions)
    summary = "Complete: the series received meet it" if met else "Not complete yet"
    return CompletionResult(problem=None, met=met, summary=summary)


# --- pages -------------------------------------------------------------------------------------


@router.get("/rules", response_class=HTMLResponse, include_in_schema=False)
def rules_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    rules = [_public(name, rule) for name, rule in services.view.config.rules.items()]
    return render(request, "rules.html", user=user, rules=rules, tags=ROUTING_TAGS)


@router.get("/rules/new", response_class=HTMLResponse, include_in_schema=False)
def new_rule_page(request: Request, services: ServicesDep, user: Viewer) -> HTMLResponse:
    return _editor(request, services, user, name=None, rule=None)


@router.get("/rules/{name}", response_class=HTMLResponse, include_in_schema=False)
def rule_page(
    request: Request, name: ConfigName, services: ServicesDep, user: Viewer
) -> HTMLResponse:
    rule = config_edit.entry_or_404(services, RULES, name)
    return _editor(request, services, user, name=name, rule=rule)


def _editor(
    request: Request, services: ServicesDep, user: Viewer, *, name: str | None, rule: Rule | None
) -> HTMLResponse:
    config = services.view.config
    return render(
        request,
        "rule.html",
        user=user,
        name=name,
        fields=form_fields(Rule, rule.model_dump(mode="json") if rule else None),
        targets=list(config.targets),
        modules=list(config.modules),
        tags=ROUTING_TAGS,
        rule_text=rule.rule if rule else "",
    )
