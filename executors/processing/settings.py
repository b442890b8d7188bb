"""Settings of the processor service (``TALARIA_*``): the installation's module safety policy.

What a module may do is the module's configuration (on the log); what the installation allows
any module to do is here, so an operator, not a module author, decides about root, docker
arguments and host volumes.
"""

from pathlib import Path

from pydantic import Field

from executors.service import ExecutorSettings


class ProcessorSettings(ExecutorSettings):
    """Everything `talaria process run` needs."""

    processing_dir: Path | None = Field(
        default=None, description="Working folders of running jobs; defaults to <data_dir>/jobs."
    )
    processor_slots: int = Field(default=1, ge=1, le=64, description="Jobs run at once.")
    module_user: str = Field(
        default="1000:1000", pattern=r"^[0-9]+:[0-9]+$", description="uid:gid of modules."
    )
    allow_root_modules: bool = Field(
        default=False, description="Let modules marked `requires_root` run as root."
    )
    allowed_docker_arguments: list[str] = Field(
        default_factory=list,
        description="docker run arguments modules may set (docker SDK names, e.g. shm_size).",
    )
    allowed_volume_roots: list[Path] = Field(
        default_factory=list, description="Host folders under which modules may mount volumes."
    )
    default_module_timeout_s: float = Field(
        default=3600.0, gt=0, description="Time limit of modules that set none."
    )
    appliance_name: str = Field(default="talaria", description="`info.mercure_appliance`.")

    @property
    def work_root(self) -> Path:
        return self.processing_dir if self.processing_dir is not None else self.data_dir / "jobs"
