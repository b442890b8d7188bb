"""XNAT target: the study as one zip through XNAT's image session import service.

`POST <host>/data/services/import` with the zip in the body, into a project, subject =
PatientID and session label `<PatientID>_<StudyDate as YYYY-MM-DD>`, as mercure does. Test =
`GET <host>/data/auth` with the credentials.
"""

import io
import zipfile
from datetime import datetime

import httpx
from pydantic import Field, SecretStr
from pydicom import dcmread

from executors.dispatch import TargetMisconfigured, TargetRefused
from executors.dispatch.target import Batch, Delivery, StagedInstance, TargetSettings, register
from executors.dispatch.targets.http import call


class XnatSettings(TargetSettings):
    host: str = Field(min_length=1, description="Base URL, e.g. https://xnat.example.org")
    project_id: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password: SecretStr
    timeout_s: float = Field(default=300.0, gt=0)


@register("xnat", XnatSettings)
class XnatTarget:
    def __init__(self, settings: XnatSettings) -> None:
        self._settings = settings
        self._base = settings.host.rstrip("/")

    def send(self, batch: Batch) -> Delivery:
        if not batch.instances:
            return Delivery(confirmed=0)
        subject, session = _labels(batch.instances[0])
        with self._client() as client:
            response = call(
                client,
                "POST",
                f"{self._base}/data/services/import",
                params={
                    "PROJECT_ID": self._settings.project_id,
                    "SUBJECT_ID": subject,
                    "EXPT_LABEL": session,
                    "rename": "true",
                    "overwrite": "delete",
                    "inbody": "true",
                },
                headers={"Content-Type": "application/zip"},
                content=_zipped(batch.instances),
            )
        if response.status_code != 200:
            raise TargetRefused(f"XNAT import answered {response.status_code}")
        return Delivery(confirmed=len(batch.instances))

    def test(self) -> str:
        with self._client() as client:
            response = call(client, "GET", f"{self._base}/data/auth")
        if response.status_code != 200:
            raise TargetMisconfigured(f"XNAT login answered {response.status_code}")
        return f"logged in to XNAT at {self._base}"

    def _client(self) -> httpx.Client:
        auth = httpx.BasicAuth(self._settings.user, self._settings.password.get_secret_value())
        return httpx.Client(auth=auth, timeout=self._settings.timeout_s)


def _labels(instance: StagedInstance) -> tuple[str, str]:
    header = dcmread(
        instance.path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate"]
    )
    subject = str(header.get("PatientID", "")) or "UNKNOWN"
    try:
        day = datetime.strptime(str(header.get("StudyDate", "")), "%Y%m%d").strftime("%Y-%m-%d")
    except ValueError:
        day = "unknown-date"
    return subject, f"{subject}_{day}"


def _zipped(instances: list[StagedInstance]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number, instance in enumerate(instances):
            archive.write(instance.path, f"{number}.dcm")
    return buffer.getvalue()
