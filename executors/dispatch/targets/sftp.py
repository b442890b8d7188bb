"""SFTP target: upload a job into `<folder>/<job>/` over SSH, with a `.complete` marker last."""

import posixpath

import paramiko

from executors.dispatch import TargetMisconfigured, TargetUnavailable
from executors.dispatch.target import Batch, Delivery, register
from executors.dispatch.targets.folder import COMPLETE_MARKER
from executors.dispatch.targets.ssh import SshSettings, connect, run_after_transfer


@register("sftp", SshSettings)
class SftpTarget:
    def __init__(self, settings: SshSettings) -> None:
        self._settings = settings

    def send(self, batch: Batch) -> Delivery:
        folder = posixpath.join(self._settings.folder, batch.job_id)
        with connect(self._settings) as client:
            try:
                with client.open_sftp() as sftp:
                    _make_folder(sftp, folder)
                    for instance in batch.instances:
                        name = posixpath.join(
                            folder, f"{instance.series_uid}#{instance.sop_uid}.dcm"
                        )
                        sftp.put(str(instance.path), f"{name}.partial")
                        sftp.posix_rename(f"{name}.partial", name)
                    with sftp.open(posixpath.join(folder, COMPLETE_MARKER), "w"):
                        pass
            except (OSError, paramiko.SSHException) as error:
                raise TargetUnavailable(f"SFTP transfer to {folder} failed: {error}") from error
            if self._settings.command:
                run_after_transfer(client, command=self._settings.command, folder=folder)
        return Delivery(confirmed=len(batch.instances))

    def test(self) -> str:
        with connect(self._settings) as client, client.open_sftp() as sftp:
            try:
                sftp.stat(self._settings.folder)
            except OSError as error:
                raise TargetMisconfigured(
                    f"remote folder {self._settings.folder} is missing: {error}"
                ) from error
        return f"logged in to {self._settings.host}; {self._settings.folder} exists"


def _make_folder(sftp: paramiko.SFTPClient, folder: str) -> None:
    try:
        sftp.stat(folder)
    except OSError:
        sftp.mkdir(folder)
