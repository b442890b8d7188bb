"""Real peers for dispatch tests: DCMTK's storescp (plain and TLS) writing what it receives."""

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    raw = path.read_bytes()
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
