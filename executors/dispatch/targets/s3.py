"""S3 target: upload a job's instances under `<prefix>/<study>/<series>/<sop>.dcm` (boto3)."""

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, SecretStr

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.target import Batch, Delivery, TargetSettings, register


class S3Settings(TargetSettings):
    bucket: str = Field(min_length=3)
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None


@register("s3", S3Settings)
class S3Target:
    def __init__(self, settings: S3Settings) -> None:
        self._bucket = settings.bucket
        self._prefix = settings.prefix.strip("/")
        secret = settings.secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=10),
        )

    def send(self, batch: Batch) -> Delivery:
        for instance in batch.instances:
            key = "/".join(
                part
                for part in (
                    self._prefix,
                    batch.study_uid,
                    instance.series_uid,
                    f"{instance.sop_uid}.dcm",
                )
                if part
            )
            try:
                self._client.upload_file(str(instance.path), self._bucket, key)
            except (ClientError, BotoCoreError) as error:
                raise _classified(error) from error
        return Delivery(confirmed=len(batch.instances))

    def test(self) -> str:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as error:
            raise _classified(error) from error
        return f"bucket {self._bucket} is reachable"


def _classified(error: ClientError | BotoCoreError) -> Exception:
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = error.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchBucket", "404"}:
            return TargetMisconfigured(f"S3 bucket does not exist: {error}")
        if 400 <= status < 500 and status not in {408, 429}:
            return TargetRefused(f"S3 refused: {error}")
    return TargetUnavailable(f"S3 unavailable: {error}")
