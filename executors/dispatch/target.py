"""The one small interface every target type implements, and the registry of types.

A target type is one module in `executors/dispatch/targets/`: a pydantic model of its settings
(mercure's field names, so imported configurations work) and a class with `send` and `test`.
Adding a target type is adding one file that calls `register`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, kw_only=True)
class StagedInstance:
    """One instance of a job, as a local file ready to send."""

    path: Path
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    series_uid: str


@dataclass(frozen=True, kw_only=True)
class Batch:
    """What one dispatch sends: a job's instances and the context a target may use."""

    job_id: str
    study_uid: str
    instances: list[StagedInstance]
    tags: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """What the target confirmed: every instance, some with warnings."""

    confirmed: int
    warnings: int = 0


class Target(Protocol):
    """A configured destination."""

    def send(self, batch: Batch) -> Delivery:
        """Deliver every instance of `batch` or raise a `DispatchError`."""
        ...

    def test(self) -> str:
        """Check the target answers (the UI's "Test" button); a sentence on success."""
        ...


Direction = Literal["store", "query", "both"]
"""What a DICOM or DICOMweb target is for: receiving what Talaria sends (`store`), being a
source Talaria retrieves studies from (`query`), or both."""


class TargetSettings(BaseModel):
    """Base of every target type's settings; mercure's descriptive fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


Factory = Callable[[Any], Target]
_TargetClass = TypeVar("_TargetClass")


@dataclass(frozen=True)
class TargetType:
    settings: type[TargetSettings]
    factory: Factory


REGISTRY: dict[str, TargetType] = {}


def register(
    type_name: str, settings: type[TargetSettings]
) -> Callable[[_TargetClass], _TargetClass]:
    """Class decorator: make `type_name` targets built from `settings`."""

    def add(target_class: _TargetClass) -> _TargetClass:
        REGISTRY[type_name] = TargetType(settings=settings, factory=target_class)  # type: ignore[arg-type]
        return target_class

    return add
