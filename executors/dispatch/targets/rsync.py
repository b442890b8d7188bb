"""rsync target: copy a job into `<folder>/<job>/` with rsync over SSH (key login only)."""

import posixpath
import shlex
import subprocess

from executors.dispatch import TargetMisconfigured, TargetUnavailable
from executors.dispatch.target import Batch, Delivery, register
from executors.dispatch.targets.ssh import SshSettings, connect, run_after_transfer

# rsync's exit codes for network trouble (rsync(1) "EXIT VALUES"): retry these.
_TRANSIENT_EXITS = frozenset({5, 10, 11, 12, 23, 30, 35, 255})


@register("rsync", SshSettings)
class RsyncTarget:
    def __init__(self, settings: SshSettings) -> None:
        if not settings.key_file:
            raise TargetMisconfigured("the rsync target logs in with a key: set key_file")
        self._settings = settings

    def send(self, batch: Batch) -> Delivery:
        settings = self._settings
        folder = posixpath.join(settings.folder, batch.job_id)
        staging = batch.instances[0].path.parent if batch.instances else None
        if staging is None:
            return Delivery(confirmed=0)
        sources = []
        for instance in batch.instances:
            link = staging / "rsync" / f"{instance.series_uid}#{instance.sop_uid}.dcm"
            link.parent.mkdir(exist_ok=True)
            if not link.exists():
                link.hardlink_to(instance.path)
            sources.append(link)
        result = subprocess.run(
            [
                "rsync",
                "--archive",
                "--partial-dir=.rsync-partial",
                "--timeout",
                str(int(settings.timeout_s)),
                "-e",
                self._ssh_command(),
                f"{staging / 'rsync'}/",
                f"{settings.user}@{settings.host}:{folder}/",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            error_type = (
                TargetUnavailable if result.returncode in _TRANSIENT_EXITS else TargetMisconfigured
            )
            raise error_type(f"rsync exited with {result.returncode}: {result.stderr[-500:]}")
        if settings.command:
            with connect(settings) as client:
                run_after_transfer(client, command=settings.command, folder=folder)
        return Delivery(confirmed=len(sources))

    def test(self) -> str:
        with connect(self._settings):
            pass
        return f"logged in to {self._settings.host}"

    def _ssh_command(self) -> str:
        settings = self._settings
        options = [
            "ssh",
            "-p",
            str(settings.port),
            "-i",
            str(settings.key_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={int(settings.timeout_s)}",
        ]
        if settings.known_hosts:
            options += ["-o", f"UserKnownHostsFile={settings.known_hosts}"]
        return shlex.join(options)
