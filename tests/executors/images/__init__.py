"""Test module images built offline, without any registry, cached by tag on the local engine.

- `busybox_module_image`: Debian's busybox-static in an empty rootfs with `module.sh`, whose
  behaviour (copy, fail, sleep, network, identity, noop) the module's environment chooses.
- `python_base_image`: `debootstrap --variant=minbase --include=python3 bookworm` from the
  mirror apt is configured with, imported once per machine (about 70 s).
- `tag_module_image`: the Python base with the venv's pydicom copied in and `tag_module.py`.

`python -m tests.executors.images` builds them all ahead of a run: `make test` does so before
the suite enters its private network namespace (`infra/isolated.sh`), where the mirror is out
of reach.

`docker_client` starts `dockerd` when the local socket does not answer; if Docker cannot run,
it raises, so Docker tests fail instead of being skipped.
"""

import hashlib
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import docker
import docker.errors
import pydicom

HERE = Path(__file__).parent
SOCKET = Path("/var/run/docker.sock")
BOOKWORM = "bookworm"
DEBOOTSTRAP_PACKAGES = "python3"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def docker_client(*, start_timeout_s: float = 60) -> docker.DockerClient:
    """A client of the local engine (or `DOCKER_HOST`), starting `dockerd` if needed."""
    client = _answering_client()
    if client is not None:
        return client
    if os.environ.get("DOCKER_HOST"):
        raise RuntimeError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
    _start_dockerd()
    deadline = time.monotonic() + start_timeout_s
    while (client := _answering_client()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"dockerd did not answer on {SOCKET} in {start_timeout_s} s")
        time.sleep(0.5)
    return client


def _answering_client() -> docker.DockerClient | None:
    """A client if the engine answers (creating one asks the engine for its API version; a
    socket nobody listens on is found out first, as the client would leak its connection)."""
    if not os.environ.get("DOCKER_HOST") and not _socket_accepts():
        return None
    try:
        client = docker.from_env(timeout=120)
        return client if client.ping() else None
    except (docker.errors.DockerException, OSError):
        return None


def _socket_accepts() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(SOCKET))
        except OSError:
            return False
    return True


_started_engines: list[subprocess.Popen[bytes]] = []  # dockerd outlives the test that starts it


def _start_dockerd() -> None:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd is not installed: run infra/install-system.sh")
    log = Path(tempfile.gettempdir()) / "talaria-dockerd.log"
    with log.open("ab") as output:
        engine = subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    _started_engines.append(engine)


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _content_tag(name: str, *parts: bytes) -> str:
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()[:12]
    return f"talaria-test/{name}:{digest}"


def busybox_module_image(client: docker.DockerClient) -> str:
    """The busybox module image; built in well under a second, once per content."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    script = (HERE / "module.sh").read_bytes()
    tag = _content_tag("busybox-module", script, str(busybox.stat().st_size).encode())
    if _exists(client, tag):
        return tag
    archive = BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as rootfs:
        _add_dir(rootfs, "bin")
        _add_dir(rootfs, "tmp", mode=0o1777)
        _add_dir(rootfs, "etc")
        _add_file(rootfs, "bin/busybox", busybox.read_bytes(), mode=0o755)
        _add_file(rootfs, "module.sh", script, mode=0o755)
        _add_file(rootfs, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", mode=0o644)
        for applet in ("sh", "cat", "cp", "ls", "id", "sleep", "nc", "wc", "grep", "cut", "touch"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            rootfs.addfile(link)
    repository, version = tag.split(":")
    client.api.import_image_from_data(
        archive.getvalue(),
        repository=repository,
        tag=version,
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh", "/module.sh"]'],
    )
    return tag


def _add_dir(rootfs: tarfile.TarFile, name: str, *, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    rootfs.addfile(info)


def _add_file(rootfs: tarfile.TarFile, name: str, data: bytes, *, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    rootfs.addfile(info, BytesIO(data))


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line format)."""
    files: list[Path] = []
    for source in APT_SOURCES:
        files += sorted(source.glob("*.sources")) + sorted(source.glob("*.list"))
        if source.is_file():
            files.append(source)
    for file in files:
        text = file.read_text(errors="replace")
        deb822 = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE)
        one_line = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+bookworm", text, re.M)
        for match in (deb822, one_line):
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def python_base_image(client: docker.DockerClient) -> str:
    """Debian bookworm minbase with python3, from the configured mirror; about 70 s once."""
    tag = f"talaria-test/python-base:{BOOKWORM}-1"
    if _exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="talaria-rootfs-") as work:
        root = Path(work) / "rootfs"
        mirror = debian_mirror()
        built = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={DEBOOTSTRAP_PACKAGES}",
                BOOKWORM,
                str(root),
                mirror,
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            raise RuntimeError(
                f"debootstrap from {mirror} failed (exit {built.returncode}); build the test "
                "images where the mirror is reachable (`python -m tests.executors.images`, "
                f"as make test does): {(built.stdout + built.stderr)[-1500:]}"
            )
        for clutter in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / clutter, ignore_errors=True)
        archive = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        repository, version = tag.split(":")
        client.api.import_image_from_file(str(archive), repository=repository, tag=version)
    return tag


def tag_module_image(client: docker.DockerClient) -> str:
    """The pydicom module: the Python base with the venv's pydicom package copied in."""
    base = python_base_image(client)
    script = (HERE / "tag_module.py").read_bytes()
    tag = _content_tag("tag-module", script, base.encode(), f"{pydicom.__version__}+meta".encode())
    if _exists(client, tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="talaria-module-") as context:
        shutil.copytree(Path(pydicom.__file__).parent, Path(context) / "pydicom")
        metadata = Path(str(importlib.metadata.distribution("pydicom").locate_file("")))
        dist_info = next(metadata.glob(f"pydicom-{pydicom.__version__}.dist-info"))
        shutil.copytree(dist_info, Path(context) / "pydicom.dist-info")
        shutil.copy(HERE / "tag_module.py", Path(context) / "tag_module.py")
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY pydicom /usr/lib/python3/dist-packages/pydicom\n"
            f"COPY pydicom.dist-info /usr/lib/python3/dist-packages/{dist_info.name}\n"
            "COPY tag_module.py /module/tag_module.py\n"
            'CMD ["python3", "/module/tag_module.py"]\n'
        )
        client.images.build(path=context, tag=tag, rm=True)
    return tag
