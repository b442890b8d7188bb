"""The safety policy: how one module of a job runs, decided without I/O.

Every container runs with all capabilities dropped, `no-new-privileges`, as the installation's
non-root uid unless the module requires root and the installation allows it, and without a
network unless the module enables one. Docker arguments and host volumes come only from the
installation's allow-lists; arguments that would undo this lockdown or that Talaria sets itself
are refused whatever the allow-list says. The environment is the module's own plus mercure's
(`MERCURE_IN_DIR`, `MERCURE_OUT_DIR`) and their MONAI and Holoscan aliases, which win.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executors.processing import ModuleNotConfigured, ModuleRefused
from executors.processing.runtime import IN_DIR, OUT_DIR, ContainerSpec
from executors.processing.settings import ProcessorSettings
from streams.config import Module

RESERVED_ARGUMENTS = frozenset(
    {
        "image",
        "name",
        "labels",
        "environment",
        "mounts",
        "volumes",
        "volumes_from",
        "user",
        "network",
        "network_mode",
        "network_disabled",
        "cap_add",
        "cap_drop",
        "privileged",
        "security_opt",
        "userns_mode",
        "pid_mode",
        "devices",
        "runtime",
        "detach",
        "remove",
        "auto_remove",
    }
)
"""docker run arguments no module may set: Talaria sets them, or they undo the lockdown."""

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def contract_environment() -> dict[str, str]:
    """The folders of mercure's module contract, under every name modules read them by."""
    return {
        "MERCURE_IN_DIR": IN_DIR,
        "MERCURE_OUT_DIR": OUT_DIR,
        "MONAI_INPUTPATH": IN_DIR,
        "MONAI_OUTPUTPATH": OUT_DIR,
        "HOLOSCAN_INPUT_PATH": IN_DIR,
        "HOLOSCAN_OUTPUT_PATH": OUT_DIR,
    }


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What this installation allows any module."""

    module_user: str
    allow_root: bool
    allowed_arguments: frozenset[str]
    allowed_volume_roots: tuple[Path, ...]
    default_timeout_s: float

    @classmethod
    def from_settings(cls, settings: ProcessorSettings) -> "Policy":
        return cls(
            module_user=settings.module_user,
            allow_root=settings.allow_root_modules,
            allowed_arguments=frozenset(settings.allowed_docker_arguments),
            allowed_volume_roots=tuple(
                Path(os.path.realpath(root)) for root in settings.allowed_volume_roots
            ),
            default_timeout_s=settings.default_module_timeout_s,
        )


@dataclass(frozen=True, kw_only=True)
class StepPlace:
    """Which job step a container belongs to, and its folders on this machine."""

    job_id: str
    attempt: int
    step: int
    in_dir: Path
    out_dir: Path


def container_spec(
    name: str, module: Module | None, *, policy: Policy, place: StepPlace
) -> ContainerSpec:
    """The container for module `name` at `place`; `ModuleRefused` if the policy forbids it."""
    if module is None or not module.docker_tag:
        raise ModuleNotConfigured(f"module {name!r} is not configured with an image")
    return ContainerSpec(
        name=_container_name(place),
        image=module.docker_tag,
        in_dir=place.in_dir,
        out_dir=place.out_dir,
        environment={**module.environment, **contract_environment()},
        user=_user(name, module, policy),
        network=module.network_enabled,
        timeout_s=module.timeout_s or policy.default_timeout_s,
        runtime=module.runtime,
        mem_limit=module.memory_limit,
        nano_cpus=None if module.cpu_limit is None else int(module.cpu_limit * 1e9),
        volumes=_volumes(name, module, policy),
        arguments=_arguments(name, module, policy),
        labels={
            "talaria.job": place.job_id,
            "talaria.attempt": str(place.attempt),
            "talaria.step": str(place.step),
            "talaria.module": name,
        },
    )


def _container_name(place: StepPlace) -> str:
    job = _UNSAFE_NAME.sub("-", place.job_id)[:100]
    return f"talaria-{job}-a{place.attempt}-s{place.step}"


def _user(name: str, module: Module, policy: Policy) -> str | None:
    if not module.requires_root:
        return policy.module_user
    if not policy.allow_root:
        raise ModuleRefused(
            f"module {name!r} requires root, and this installation does not allow root modules"
        )
    return None


def _arguments(name: str, module: Module, policy: Policy) -> dict[str, Any]:
    reserved = sorted(set(module.docker_arguments) & RESERVED_ARGUMENTS)
    if reserved:
        raise ModuleRefused(f"module {name!r} may not set docker arguments {', '.join(reserved)}")
    refused = sorted(set(module.docker_arguments) - policy.allowed_arguments)
    if refused:
        raise ModuleRefused(
            f"module {name!r} sets docker arguments outside the allow-list: {', '.join(refused)}"
        )
    return dict(module.docker_arguments)


def _volumes(name: str, module: Module, policy: Policy) -> dict[str, dict[str, Any]]:
    for host_path, binding in module.additional_volumes.items():
        real = Path(os.path.realpath(host_path))
        if not any(real.is_relative_to(root) for root in policy.allowed_volume_roots):
            raise ModuleRefused(f"module {name!r} mounts {host_path}, outside the allowed folders")
        if str(binding.get("bind", "")).rstrip("/") in (IN_DIR, OUT_DIR):
            raise ModuleRefused(f"module {name!r} mounts {host_path} over the job's folders")
    return dict(module.additional_volumes)
