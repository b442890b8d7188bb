"""Settings of the DICOM receiver and web intake (``TALARIA_*`` environment variables)."""

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infra.settings import BlobSettings, LogSettings

_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 Table 6.2-1: AE, no backslash


def _valid_ae_title(value: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters, no backslash")
    return value.strip()


class IngestSettings(LogSettings, BlobSettings):
    """Everything the receiver needs: where to listen, what to accept, where bytes and events go."""

    ae_title: str = Field(default="TALARIA", description="Our AE title.")
    dicom_bind: str = Field(
        default="127.0.0.1", description="Address the DICOM port listens on (0.0.0.0: all)."
    )
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    dicom_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Receiver processes behind the DICOM ports: more use more cores for "
        "concurrent senders. The parent process accepts each connection and hands it to the "
        "worker serving the fewest. Each has its own journal, /metrics port "
        "(metrics_port + its number) and association limit.",
    )
    max_associations: int = Field(default=32, ge=1, le=1024, description="Per worker.")
    acse_timeout_s: float = Field(default=30.0, gt=0, description="Wait for association PDUs.")
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="Wait inside one message.")
    network_timeout_s: float = Field(default=60.0, gt=0, description="Idle association limit.")
    max_pdu: int = Field(
        default=262_144, ge=4096, le=16 * 1024**2, description="Largest PDU we accept."
    )
    accept_compressed: bool = Field(
        default=True, description="Accept compressed transfer syntaxes (JPEG, RLE, deflate, ...)."
    )
    check_called_aet: bool = Field(
        default=False, description="Reject associations not addressed to our AE title."
    )
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Calling AE titles accepted; empty: any."
    )
    tls_port: int | None = Field(default=None, ge=1, le=65535, description="DICOM TLS port.")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = Field(
        default=None, description="CA bundle: when set, peers must present a certificate."
    )
    extra_tags: list[str] = Field(
        default_factory=list, description="Tags added to the snapshot: keywords or (gggg,eeee)."
    )
    ack_after: Literal["journal", "broker"] = Field(
        default="broker",
        description="Answer a C-STORE only once the broker acknowledged its event (the "
        "guarantee of the design), or once the event is in the local journal, forwarded to "
        "the broker in batches (faster under load; the journal's disk must survive).",
    )
    journal_dir: Path | None = Field(
        default=None, description="Folder of the intake journal; defaults to <data_dir>/ingest."
    )
    metrics_bind: str = Field(default="127.0.0.1")
    metrics_port: int | None = Field(
        default=9112, ge=1, le=65535, description="Prometheus /metrics port; unset: none."
    )

    @property
    def journal_root(self) -> Path:
        return self.journal_dir if self.journal_dir is not None else self.data_dir / "ingest"

    def for_worker(self, number: int) -> "IngestSettings":
        """The settings of worker `number` (0-based) of `dicom_workers`: its own journal and
        /metrics port; worker 0 keeps the configured ones."""
        if number == 0:
            return self
        update: dict[str, object] = {
            "journal_dir": self.journal_root.with_name(f"{self.journal_root.name}.{number}")
        }
        if self.metrics_port is not None:
            update["metrics_port"] = self.metrics_port + number
        return self.model_copy(update=update)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _valid_ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _calling_aets(cls, values: list[str]) -> list[str]:
        return [_valid_ae_title(value) for value in values]

    @model_validator(mode="after")
    def _tls_complete(self) -> "IngestSettings":
        if self.tls_port is not None and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("tls_port needs tls_cert and tls_key")
        return self
