"""Folder target: copy a job into `<folder>/<job>/`, with a `.complete` marker written last."""

import fnmatch
import os
import shutil
from pathlib import Path

from pydantic import Field

from executors.dispatch import TargetMisconfigured, TargetUnavailable
from executors.dispatch.target import Batch, Delivery, TargetSettings, register

COMPLETE_MARKER = ".complete"


class FolderSettings(TargetSettings):
    folder: str = Field(min_length=1)
    exclude_pattern: list[str] = Field(
        default_factory=list, description="File name globs not copied (e.g. '*.tags')."
    )


@register("folder", FolderSettings)
class FolderTarget:
    def __init__(self, settings: FolderSettings) -> None:
        self._root = Path(settings.folder)
        self._exclude = settings.exclude_pattern

    def send(self, batch: Batch) -> Delivery:
        destination = self._root / batch.job_id
        try:
            destination.mkdir(parents=True, exist_ok=True)
            copied = 0
            for instance in batch.instances:
                name = f"{instance.series_uid}#{instance.sop_uid}.dcm"
                if any(fnmatch.fnmatch(name, pattern) for pattern in self._exclude):
                    continue
                _copy_durably(instance.path, destination / name)
                copied += 1
            (destination / COMPLETE_MARKER).touch()
        except OSError as error:
            raise TargetUnavailable(f"cannot write to {destination}: {error}") from error
        return Delivery(confirmed=copied)

    def test(self) -> str:
        if not self._root.is_dir():
            raise TargetMisconfigured(f"folder {self._root} does not exist")
        if not os.access(self._root, os.W_OK):
            raise TargetMisconfigured(f"folder {self._root} is not writable")
        return f"folder {self._root} exists and is writable"


def _copy_durably(source: Path, destination: Path) -> None:
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.copyfile(source, partial)
    with partial.open("rb") as written:
        os.fsync(written.fileno())
    partial.replace(destination)
