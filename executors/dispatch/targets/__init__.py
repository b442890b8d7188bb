"""Every target type, one module each; importing this package registers them all."""

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from executors.dispatch import TargetMisconfigured
from executors.dispatch.target import REGISTRY, Target, TargetSettings
from executors.dispatch.targets import (  # noqa: F401 - registration
    dicom,
    dicomweb,
    folder,
    rsync,
    s3,
    sftp,
    xnat,
)


def target_settings(config: Mapping[str, Any]) -> TargetSettings:
    """Validate a target's configuration (`target_type` plus its fields)."""
    type_name = config.get("target_type")
    if not isinstance(type_name, str) or type_name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise TargetMisconfigured(f"unknown target type {type_name!r} (known: {known})")
    try:
        return REGISTRY[type_name].settings.model_validate(dict(config))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        raise TargetMisconfigured(f"{type_name} target: {problems}") from error


def open_target(config: Mapping[str, Any]) -> Target:
    """A ready target for a configuration; `TargetMisconfigured` when it is invalid."""
    settings = target_settings(config)
    return REGISTRY[str(config["target_type"])].factory(settings)
