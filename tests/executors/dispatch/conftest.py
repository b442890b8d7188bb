"""Real peers for dispatch tests: DCMTK's storescp (plain and TLS) writing what it receives."""

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from executors.dispatch.staging import describe
from executors.dispatch.target import Batch
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK, free_port, serving


@dataclass(frozen=True)
class StoreSCP:
    port: int
    folder: Path

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def storescp_command(port: int, folder: Path, *extra: str) -> list[str]:
    """storescp writing every object exactly as received (+B), any transfer syntax (+xa)."""
    return [
        f"{DCMTK}/storescp",
        "+B",
        "+xa",
        "-aet",
        "STORE",
        "-od",
        str(folder),
        *extra,
        str(port),
    ]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    with serving(storescp_command(port, folder), port=port):
        yield StoreSCP(port=port, folder=folder)


def dataset_bytes(path: Path) -> bytes:
    """The data set of a DICOM file without its preamble and file meta (which each writer
    makes its own): what must arrive unchanged."""
    return dataset_bytes_of(path.read_bytes())


def dataset_bytes_of(raw: bytes) -> bytes:
    """As `dataset_bytes`, of a file's bytes."""
    assert raw[128:132] == b"DICM"
    assert raw[132:136] == b"\x02\x00\x00\x00", "file meta must start with its group length"
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_length :]


@pytest.fixture
def study(tmp_path: Path) -> Batch:
    """Two series of three small CT instances, as a batch ready to send."""
    files = write_study(tmp_path / "study", series=2, instances=3)
    instances = [describe(path) for path in files]
    return Batch(job_id="job-1", study_uid="9.9", instances=instances, tags={})


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server and a client certificate signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        str(folder / "ca.key"),
        "-out",
        str(folder / "ca.pem"),
    )
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / f"{name}.key"),
            "-out",
            str(folder / f"{name}.csr"),
        )
        openssl(
            "x509",
            "-req",
            "-in",
            str(folder / f"{name}.csr"),
            "-CA",
            str(folder / "ca.pem"),
            "-CAkey",
            str(folder / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            str(folder / f"{name}.pem"),
        )
    return {
        name: folder / name
        for name in ("ca.pem", "server.key", "server.pem", "client.key", "client.pem")
    }


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicom_port: int
    move_port: int
    """Where Orthanc sends a C-MOVE to the AE title TALARIA."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def instance_files(self, study_uid: str) -> dict[str, bytes]:
        """Every instance of a study as Orthanc holds it, by SOP Instance UID."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            found = client.post(
                "/tools/find",
                json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}},
            ).json()
            files = {}
            for orthanc_id in found:
                tags = client.get(f"/instances/{orthanc_id}/simplified-tags").json()
                files[tags["SOPInstanceUID"]] = client.get(f"/instances/{orthanc_id}/file").content
        return files


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Debian's Orthanc as a PACS: C-FIND and C-GET for any AE, C-MOVE to TALARIA at
    127.0.0.1:`move_port`, DICOMweb at /dicom-web/."""
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    config = tmp_path / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "PACS",
                "DicomAet": "PACS",
                "StorageDirectory": str(tmp_path / "orthanc-storage"),
                "IndexDirectory": str(tmp_path / "orthanc-storage"),
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomServerEnabled": True,
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowGet": True,
                "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowMove": True,
                "DicomModalities": {"talaria": ["TALARIA", "127.0.0.1", move_port]},
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        )
    )
    with serving(["/usr/sbin/Orthanc", "--logdir=" + str(tmp_path), str(config)], port=http_port):
        yield Orthanc(http_port=http_port, dicom_port=dicom_port, move_port=move_port)


@dataclass(frozen=True)
class Sshd:
    port: int
    key_file: Path
    known_hosts: Path
    folder: Path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """Debian's OpenSSH server on 127.0.0.1 accepting one test key for the current user."""
    keys = tmp_path / "ssh"
    keys.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client")], check=True
    )
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    host_key = (keys / "host.pub").read_text().split()
    known_hosts = keys / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                f"PidFile {keys / 'sshd.pid'}",
                "PermitRootLogin yes",
                "PasswordAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder sshd insists on
    folder = tmp_path / "remote"
    folder.mkdir()
    with serving(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], port=port):
        yield Sshd(port=port, key_file=keys / "client", known_hosts=known_hosts, folder=folder)
