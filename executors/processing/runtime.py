"""Module runtimes: run one container to its end, behind a small protocol.

`ContainerSpec` is everything the policy decided about one module run; `ModuleRuntime.run`
turns it into a `ContainerRun` (exit code, logs, duration) or raises from the package's
exception tree. `DockerRuntime` uses the local engine (`DOCKER_HOST` points elsewhere); it pulls
an image only when the engine does not have it, and it names containers after the job step, so a
container left running by a killed processor is replaced, not duplicated.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
import requests
import structlog
from docker.models.containers import Container
from docker.types import Mount

from executors.processing import (
    ContainerGone,
    ImageUnavailable,
    ModuleCrashed,
    ModuleTimedOut,
    RuntimeUnavailable,
)

log = structlog.get_logger(__name__)

IN_DIR = "/tmp/data"  # noqa: S108 - the path mercure modules expect inside their container
OUT_DIR = "/tmp/output"  # noqa: S108


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """One module run, fully decided: image, folders, identity, isolation and limits."""

    name: str
    image: str
    in_dir: Path
    out_dir: Path
    environment: dict[str, str]
    user: str | None
    network: bool
    timeout_s: float
    runtime: str | None = None
    mem_limit: str | None = None
    nano_cpus: int | None = None
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    arguments: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ContainerRun:
    """How a container ended."""

    exit_code: int
    logs: bytes
    duration_s: float


class ModuleRuntime(Protocol):
    """Runs module containers."""

    def run(self, spec: ContainerSpec) -> ContainerRun:
        """Run `spec` to its end; `ModuleTimedOut` once it passes its time limit."""
        ...


class DockerRuntime:
    """Module containers on a Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> "DockerRuntime":
        """The engine of `DOCKER_HOST`, or the local socket."""
        try:
            return cls(docker.from_env())
        except docker.errors.DockerException as error:
            raise RuntimeUnavailable(f"Docker engine unreachable: {error}") from error

    def run(self, spec: ContainerSpec) -> ContainerRun:
        try:
            self._ensure_image(spec.image)
            self._remove_stale(spec.name)
            container = self._create(spec)
            try:
                return self._run_to_end(container, spec)
            finally:
                self._remove(container)
        except requests.exceptions.ConnectionError as error:
            raise RuntimeUnavailable(f"Docker engine unreachable: {error}") from error

    def _ensure_image(self, image: str) -> None:
        """Use the local image; pull only when the engine does not have it."""
        try:
            self._client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            log.info("pulling module image", image=image)
            self._client.images.pull(image)
        except docker.errors.APIError as error:
            raise ImageUnavailable(f"image {image} is not on the engine and {error}") from error

    def _remove_stale(self, name: str) -> None:
        """Remove a container of the same job step left by a processor that was killed."""
        try:
            stale = self._client.containers.get(name)
        except docker.errors.NotFound:
            return
        log.warning("removing a stale container of this job step", container=name)
        stale.remove(force=True)

    def _create(self, spec: ContainerSpec) -> Container:
        options: dict[str, Any] = {
            **spec.arguments,
            "name": spec.name,
            "labels": spec.labels,
            "environment": spec.environment,
            "mounts": [
                Mount(target=IN_DIR, source=str(spec.in_dir), type="bind"),
                Mount(target=OUT_DIR, source=str(spec.out_dir), type="bind"),
            ],
            "volumes": spec.volumes,
            "network_mode": "bridge" if spec.network else "none",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        optional = {
            "user": spec.user,
            "runtime": spec.runtime,
            "mem_limit": spec.mem_limit,
            "nano_cpus": spec.nano_cpus,
        }
        options.update({key: value for key, value in optional.items() if value is not None})
        try:
            container: Container = self._client.containers.create(spec.image, **options)
        except docker.errors.APIError as error:
            raise ModuleCrashed(f"container for {spec.image} not created: {error}") from error
        return container

    def _run_to_end(self, container: Container, spec: ContainerSpec) -> ContainerRun:
        started = time.monotonic()
        try:
            container.start()
        except docker.errors.APIError as error:
            raise ModuleCrashed(f"container for {spec.image} did not start: {error}") from error
        exit_code = self._wait(container, spec, deadline=started + spec.timeout_s)
        duration = time.monotonic() - started
        return ContainerRun(exit_code=exit_code, logs=self._logs(container), duration_s=duration)

    def _wait(self, container: Container, spec: ContainerSpec, *, deadline: float) -> int:
        try:
            status = container.wait(timeout=max(deadline - time.monotonic(), 0.001))
        except docker.errors.NotFound as error:
            raise ContainerGone(f"container {spec.name} was removed while running") from error
        except requests.exceptions.RequestException as error:
            if time.monotonic() < deadline:
                raise RuntimeUnavailable(f"lost the Docker engine: {error}") from error
            container.kill()
            raise ModuleTimedOut(
                f"module image {spec.image} ran past its time limit of {spec.timeout_s:g} s "
                "and was killed"
            ) from None
        return int(status["StatusCode"])

    def _logs(self, container: Container) -> bytes:
        logs: bytes = container.logs(stdout=True, stderr=True, timestamps=True)
        return logs

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            log.warning("container not removed", container=container.name, error=str(error))
