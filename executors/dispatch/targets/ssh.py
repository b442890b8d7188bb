"""What the SFTP and rsync targets share: an SSH login and the command run after a transfer."""

import shlex
from pathlib import Path

import paramiko
from pydantic import Field, SecretStr

from executors.dispatch import TargetMisconfigured, TargetRefused, TargetUnavailable
from executors.dispatch.target import TargetSettings


class SshSettings(TargetSettings):
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    key_file: str | None = Field(default=None, description="Private key for the login.")
    known_hosts: str | None = Field(
        default=None, description="known_hosts file with the server's key (default: ~/.ssh)."
    )
    folder: str = Field(min_length=1, description="Remote folder; each job gets a subfolder.")
    command: str | None = Field(
        default=None, description="Run on the server after a transfer; gets the job's folder."
    )
    timeout_s: float = Field(default=30.0, gt=0)


def connect(settings: SshSettings) -> paramiko.SSHClient:
    """An SSH session; the server's key must be known (no trust on first use)."""
    client = paramiko.SSHClient()
    known_hosts = settings.known_hosts or str(Path.home() / ".ssh" / "known_hosts")
    try:
        client.load_host_keys(known_hosts)
    except OSError as error:
        raise TargetMisconfigured(f"cannot read known hosts {known_hosts}: {error}") from error
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    host_entry = settings.host if settings.port == 22 else f"[{settings.host}]:{settings.port}"
    if client.get_host_keys().lookup(host_entry) is None:
        client.close()
        raise TargetMisconfigured(f"{host_entry}'s key is not in {known_hosts}")
    try:
        client.connect(
            settings.host,
            port=settings.port,
            username=settings.user,
            password=settings.password.get_secret_value() if settings.password else None,
            key_filename=settings.key_file,
            timeout=settings.timeout_s,
            allow_agent=False,
            look_for_keys=False,
        )
    except (paramiko.AuthenticationException, paramiko.BadHostKeyException) as error:
        client.close()
        raise TargetMisconfigured(f"SSH login to {settings.host} refused: {error}") from error
    except (paramiko.SSHException, OSError) as error:
        client.close()
        raise TargetUnavailable(f"SSH to {settings.host} failed: {error}") from error
    return client


def run_after_transfer(client: paramiko.SSHClient, *, command: str, folder: str) -> None:
    """Run the configured command with the job's folder as its argument; it must exit 0."""
    _stdin, stdout, stderr = client.exec_command(f"{command} {shlex.quote(folder)}")
    status = stdout.channel.recv_exit_status()
    if status != 0:
        message = stderr.read().decode(errors="replace")[-500:]
        raise TargetRefused(f"command after transfer exited with {status}: {message}")
