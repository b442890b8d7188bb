"""Typed settings for every service, read from ``TALARIA_*`` environment variables.

One model per concern; a service's settings class combines the ones it needs. Values are
validated when the service starts, so a typo fails at once with the variable's name in the
message instead of half-way through a transfer. Routing configuration (rules, targets, modules)
is not here: it lives in the event log.
"""

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.errors import PermanentError

S = TypeVar("S", bound=BaseSettings)

_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9._-]{0,100}")


class SettingsInvalid(PermanentError):
    """The environment holds a value a service cannot start with."""


class TalariaSettings(BaseSettings):
    """Settings every service shares."""

    model_config = SettingsConfigDict(env_prefix="TALARIA_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("talaria-data"), description="Folder holding all local state."
    )
    mode: Literal["development", "production"] = "development"


class LogSettings(TalariaSettings):
    """How a service reaches the event log (Kafka)."""

    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port...].",
    )
    topic_prefix: str = Field(
        default="talaria.", description="Prefix of every topic name (shared clusters)."
    )
    publish_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait for the broker's acknowledgement."
    )
    log_retention_hours: int = Field(
        default=24 * 14,
        ge=1,
        description="Retention of instance, series and job topics; at least the blob retention.",
    )
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="How often a service publishes its heartbeat; stale after 3 missed.",
    )
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1_000)
    consumer_heartbeat_ms: int = Field(default=1_000, ge=100)
    consumer_max_poll_interval_ms: int = Field(default=300_000, ge=1_000)

    @field_validator("topic_prefix")
    @classmethod
    def _valid_topic_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.fullmatch(value):
            raise ValueError("may hold only letters, digits, '.', '_' and '-' (at most 100)")
        return value


class BrokerSettings(TalariaSettings):
    """The local single-node Kafka broker that `talaria kafka start` and `talaria up` manage."""

    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=128)
    kafka_optimizing_jit: bool = Field(
        default=True,
        description="Let the broker's JVM compile its hot code fully (C2): about a core for "
        "its first minutes, then half the CPU per produce request. Off (C1 only) suits "
        "short-lived brokers, such as tests start.",
    )
    kafka_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "talaria",
        description="Where the broker's jars fetched from Maven Central are kept.",
    )


class BlobSettings(TalariaSettings):
    """Where DICOM bytes and job files are stored."""

    blob_store: Literal["folder", "s3"] = "folder"
    blob_dir: Path = Field(
        default=Path("talaria-data/blobs"), description="Folder store root; <data_dir>/blobs."
    )
    blob_min_free_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Refuse new data below this much free space."
    )
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _blobs_under_data_dir(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("blob_dir") is None:
            data_dir = values.get("data_dir", cls.model_fields["data_dir"].default)
            values = {**values, "blob_dir": Path(data_dir) / "blobs"}
        return values


def load(settings_class: type[S]) -> S:
    """Read and validate settings; raise `SettingsInvalid` naming each bad variable."""
    try:
        return settings_class()
    except ValidationError as error:
        prefix = settings_class.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'_'.join(str(part) for part in issue['loc']).upper()}: {issue['msg']}"
            for issue in error.errors()
        )
        raise SettingsInvalid(f"invalid settings: {problems}") from error
