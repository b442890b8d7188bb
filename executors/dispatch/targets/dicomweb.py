"""DICOMweb target: STOW-RS in batches, each a non-chunked multipart/related body (PS3.18 §10.5).

Success only when the response references every instance sent (ReferencedSOPSequence); a
FailedSOPSequence or a missing reference is a refusal. HTTP 5xx, 408, 429 and connection errors
are transient; other 4xx are permanent. Test = a QIDO-RS query for one study.
"""

import uuid

import httpx
from pydantic import Field, SecretStr, model_validator

from executors.dispatch import TargetRefused
from executors.dispatch.target import (
    Batch,
    Delivery,
    Direction,
    StagedInstance,
    TargetSettings,
    register,
)
from executors.dispatch.targets.http import call

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"


class DicomWebSettings(TargetSettings):
    direction: Direction = "store"
    url: str = Field(
        min_length=1,
        description="Base URL of the DICOMweb service, or file:///folder: a folder of DICOM "
        "files to retrieve from (direction query).",
    )
    stow_url_prefix: str | None = None
    qido_url_prefix: str | None = None
    access_token: SecretStr | None = None
    http_user: str | None = None
    http_password: SecretStr | None = None
    batch_size: int = Field(default=50, ge=1, le=10_000)
    timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _folder_is_a_source(self) -> "DicomWebSettings":
        if self.is_folder and self.direction != "query":
            raise ValueError("a file:// folder can only be a source: set direction to query")
        return self

    @property
    def is_folder(self) -> bool:
        return self.url.startswith("file://")


def web_client(settings: DicomWebSettings) -> httpx.Client:
    """An HTTP client with the target's credentials (bearer token or basic auth)."""
    headers = {}
    auth = None
    if settings.access_token is not None:
        headers["Authorization"] = f"Bearer {settings.access_token.get_secret_value()}"
    elif settings.http_user:
        password = settings.http_password.get_secret_value() if settings.http_password else ""
        auth = httpx.BasicAuth(settings.http_user, password)
    return httpx.Client(headers=headers, auth=auth, timeout=settings.timeout_s)


@register("dicomweb", DicomWebSettings)
class DicomWebTarget:
    def __init__(self, settings: DicomWebSettings) -> None:
        self._settings = settings
        base = settings.url.rstrip("/")
        self._stow = f"{(settings.stow_url_prefix or base).rstrip('/')}/studies"
        self._qido = f"{(settings.qido_url_prefix or base).rstrip('/')}/studies"

    def send(self, batch: Batch) -> Delivery:
        size = self._settings.batch_size
        with self._client() as client:
            for start in range(0, len(batch.instances), size):
                self._store(client, batch.instances[start : start + size])
        return Delivery(confirmed=len(batch.instances))

    def test(self) -> str:
        with self._client() as client:
            response = call(client, "GET", self._qido, params={"limit": "1"})
        return f"QIDO-RS at {self._qido} answered {response.status_code}"

    def _client(self) -> httpx.Client:
        return web_client(self._settings)

    def _store(self, client: httpx.Client, instances: list[StagedInstance]) -> None:
        boundary = uuid.uuid4().hex
        body = _multipart(instances, boundary=boundary)
        response = call(
            client,
            "POST",
            self._stow,
            content=body,
            headers={
                "Content-Type": (
                    f'multipart/related; type="application/dicom"; boundary={boundary}'
                ),
                "Accept": "application/dicom+json",
                "Content-Length": str(len(body)),
            },
        )
        _check_references(response, instances)


def _multipart(instances: list[StagedInstance], *, boundary: str) -> bytes:
    parts = [
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + instance.path.read_bytes()
        + b"\r\n"
        for instance in instances
    ]
    return b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"


def _check_references(response: httpx.Response, instances: list[StagedInstance]) -> None:
    try:
        answer = response.json()
    except ValueError as error:
        raise TargetRefused(f"STOW-RS answer is not DICOM JSON: {error}") from error
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    failed = answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    referenced = {
        str(item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [""])[0])
        for item in answer.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    }
    missing = [i.sop_uid for i in instances if i.sop_uid not in referenced]
    if failed or missing:
        raise TargetRefused(
            f"STOW-RS stored {len(instances) - len(missing)} of {len(instances)} instances "
            f"({len(failed)} reported failed)"
        )
