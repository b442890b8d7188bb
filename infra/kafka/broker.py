"""Fetch, format, start and stop a single-node Kafka broker in KRaft mode.

The jars come from Maven Central through `pom.xml` beside this file (`mvn
dependency:copy-dependencies`, cached per version). The broker listens on 127.0.0.1 only,
keeps its data in a persistent folder, and is ready when a Kafka client can read its metadata.
The same code backs `talaria kafka start|stop|status`, `talaria up` and the test fixture.

Errors: `BrokerError` (permanent) when fetching, formatting or starting fails; its message
includes the tail of the broker's log or Maven's output.
"""

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.errors import PermanentError

KAFKA_VERSION = "3.9.1"
_READY_MARKER = ".complete"


class BrokerError(PermanentError):
    """The local broker could not be fetched, formatted, started or stopped."""


def _resource(name: str) -> Path:
    return Path(str(resources.files("infra.kafka").joinpath(name)))


def fetch_jars(cache_dir: Path) -> Path:
    """The folder of the broker's jars, downloading them with Maven on first use."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / _READY_MARKER).exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch Kafka: apt-get install maven")
    staging = libs.with_name(f"libs.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(_resource("pom.xml")),
            "dependency:copy-dependencies",
            f"-Dkafka.version={KAFKA_VERSION}",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(f"mvn could not fetch Kafka {KAFKA_VERSION}: {result.stdout[-2000:]}")
    (staging / _READY_MARKER).touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


@dataclass(frozen=True, kw_only=True)
class BrokerLayout:
    """Where one broker keeps its files, and the ports it listens on."""

    home: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def console_file(self) -> Path:
        return self.home / "console.log"


def _server_properties(layout: BrokerLayout) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{layout.controller_port}",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://127.0.0.1:{layout.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{layout.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(layout.data_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "message.max.bytes": str(8 * 1024 * 1024),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


class LocalBroker:
    """One single-node KRaft broker on 127.0.0.1 with its data in `layout.home`."""

    def __init__(
        self, layout: BrokerLayout, *, libs: Path, heap_mb: int = 512, optimizing_jit: bool = False
    ) -> None:
        self.layout = layout
        self._libs = libs
        self._heap_mb = heap_mb
        self._optimizing_jit = optimizing_jit
        # The broker we started, kept so that stopping it also reaps it.
        self._process: subprocess.Popen[bytes] | None = None

    def _java(self, main_class: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "Java is needed to run Kafka: apt-get install openjdk-17-jre-headless"
            )
        return [
            java,
            f"-Xmx{self._heap_mb}m",
            "-Xss1m",
            "-XX:+UseG1GC",
            *self._jit_options,
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{_resource('log4j.properties')}",
            f"-Dkafka.logs.dir={self.layout.home}",
            "-cp",
            f"{self._libs}/*",
            main_class,
            *args,
        ]

    @property
    def _jit_options(self) -> list[str]:
        """C2, the optimizing compiler, takes about a core for the broker's first minutes and
        then halves its CPU per produce request (0.14 against 0.30 ms, one request at a time
        on 2 cores): worth it for a broker that runs for days, not for one a test starts."""
        return [] if self._optimizing_jit else ["-XX:TieredStopAtLevel=1"]

    def format(self) -> None:
        """Write the configuration and format the storage, unless already formatted."""
        self.layout.home.mkdir(parents=True, exist_ok=True)
        self.layout.properties_file.write_text(_server_properties(self.layout))
        if (self.layout.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                _cluster_id(),
                "-c",
                str(self.layout.properties_file),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def pid(self) -> int | None:
        """The broker's process id if it is running, else None."""
        try:
            pid = int(self.layout.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        return pid if b"kafka.Kafka" in cmdline else None

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Start the broker in its own session (it outlives the caller) and wait until ready."""
        if self.pid() is not None:
            self.wait_ready(timeout_s=timeout_s)
            return
        self.format()
        with self.layout.console_file.open("ab") as console:
            process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.layout.properties_file)),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._process = process
        self.layout.pid_file.write_text(str(process.pid))
        try:
            self.wait_ready(timeout_s=timeout_s, process=process)
        except BrokerError:
            self.stop()
            raise

    def wait_ready(
        self, *, timeout_s: float, process: "subprocess.Popen[bytes] | None" = None
    ) -> None:
        """Return when a client can read the broker's metadata; `BrokerError` after the timeout."""
        admin = AdminClient({"bootstrap.servers": self.layout.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise BrokerError(f"Kafka exited with {process.returncode}: {self._log_tail()}")
            try:
                metadata = admin.list_topics(timeout=1)
                if metadata.brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.1)
        raise BrokerError(f"Kafka not ready after {timeout_s:.0f} s: {self._log_tail()}")

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL); True if one was running."""
        pid = self.pid()
        if pid is None:
            self.layout.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout_s=timeout_s):
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, timeout_s=10)
        self.layout.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (fault tests)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, timeout_s=10)

    def _wait_exit(self, pid: int, *, timeout_s: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            self._process = None
            return True
        return _wait_foreign_exit(pid, timeout_s=timeout_s)

    def _log_tail(self) -> str:
        for path in (self.layout.log_file, self.layout.console_file):
            if path.exists():
                return path.read_text(errors="replace")[-2000:]
        return "(no log)"


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never starting with "-", which the storage tool would read as an option.
    """
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()).startswith("-"):
        pass
    return cluster_id.rstrip("=")


def _wait_foreign_exit(pid: int, *, timeout_s: float) -> bool:
    """Wait for a broker started by another process (e.g. an earlier `talaria kafka start`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, IndexError):
        return True
