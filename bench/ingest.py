"""C-STORE receive throughput: Talaria's receiver beside Orthanc and DCMTK's storescp.

The same data sets go from DCMTK's `storescu` (TCP_NODELAY on, as in every DICOM process here)
to each receiver in turn, interleaved in one run with the order rotating every repetition, so
the ratios come out of the same noise. Every receiver is started fresh for each measurement and
stores what it gets: Talaria into its blob folder with an event per instance on a local
single-node Kafka broker started by this script (`talaria`: answered once the blob is fsynced
and the broker acknowledged the event, the default; `talaria-journal`: once the blob and the
event in the intake journal are fsynced), with two receiver processes per core
(`TALARIA_DICOM_WORKERS`, see `WORKERS_PER_CORE`), Orthanc 1.10 (Debian) with its default
fdatasync of each stored file, storescp writing files (no fsync).
The broker runs as `talaria kafka start` runs it and is warmed up with Talaria's own traffic
before the first measurement (see `warm_up`).
Elapsed is storescu's wall time, from association request to release; peak RSS is VmHWM of the
receiver's processes (Kafka not counted).

Where the time goes: CPU per instance over the send, for the whole machine (every core's busy
time from /proc/stat: receiver, broker, the storescu senders and kernel threads together), the
receiver's processes, and for Talaria the broker (its JVM). On a 2-core machine a receiver
faster than another with several senders is one that spends less machine CPU per instance.

Data (generated once with pydicom, cached in --work): `ct` = 2 series x 250 CT images
512x512 16-bit (~526 kB each), `small` = 4 series x 250 images 64x64 (~10 kB each).

Storescp and Orthanc bind every interface, so the run happens in a private network namespace
with only loopback (`unshare --net`, root), as the reference harness did.

Usage (from the repository root, as root):
    .venv/bin/python -m bench.ingest [--reps 3] [--senders 1,4] [--datasets ct,small]
"""

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.dicom_data import ct_instance, new_uid
from infra.admin import ensure_topics
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.settings import BrokerSettings, LogSettings

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
DATASETS = {
    "ct": {"series": 2, "instances": 250, "rows": 512},
    "small": {"series": 4, "instances": 250, "rows": 64},
}
PORT = 11112
TOPIC_PREFIX = "bench."  # the topics of every Talaria receiver in a run
# A worker waiting for the disk or holding its interpreter lock in a system call stalls the
# other associations it serves: 4 workers for 4 senders on 2 cores took 5-7 % more small
# instances per second than 2 (medians of 4-5 interleaved runs, three runs) and 2-3 % fewer CT
# images (two runs, within the noise), at 480 MB of peak RSS instead of 290.
WORKERS_PER_CORE = 2
DCMTK_ENV = {"TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Result:
    receiver: str
    dataset: str
    senders: int
    rep: int
    count: int
    megabytes: float
    elapsed_s: float
    delivered: int
    peak_rss_mb: float
    machine_cpu_ms: float
    receiver_cpu_ms: float
    broker_cpu_ms: float

    @property
    def per_second(self) -> float:
        return self.count / self.elapsed_s


# --- data -----------------------------------------------------------------------------------


def make_dataset(folder: Path, *, series: int, instances: int, rows: int) -> list[Path]:
    """A deterministic study as Explicit VR Little Endian files, cached in `folder`."""
    manifest = folder / "manifest.json"
    if manifest.exists():
        return [folder / name for name in json.loads(manifest.read_text())]
    rng = random.Random(42)
    study = new_uid()
    files = []
    for s in range(1, series + 1):
        series_uid = new_uid()
        slices = [rng.randbytes(rows * rows * 2) for _ in range(8)]
        for i in range(1, instances + 1):
            path = folder / f"s{s:03d}" / f"i{i:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds = ct_instance(
                study_uid=study, series_uid=series_uid, number=i, rows=rows, pixels=slices[i % 8]
            )
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    manifest.write_text(json.dumps([str(p.relative_to(folder)) for p in files]))
    return files


# --- receivers ------------------------------------------------------------------------------


class Receiver:
    """One receiver under test: start it fresh, count what it stored, stop it."""

    name = ""
    aet = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = stores(work) / self.name
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **DCMTK_ENV}

    def start(self) -> None:
        """Start on an empty store of its own; earlier stores stay until the run ends (see
        `stores`)."""
        stores(self.work).mkdir(parents=True, exist_ok=True)
        self.store = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=stores(self.work)))
        log = (self.work / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), env=self.environment(), stdout=log, stderr=log, start_new_session=True
        )
        wait_listening(PORT, self.process)

    def delivered(self) -> int:
        return sum(1 for p in self.store.rglob("*") if p.is_file() and p.stat().st_size > 1024)

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        return sum(vm_hwm_kb(pid) for pid in process_tree(self.process.pid)) / 1024

    def cpu_s(self) -> float:
        """CPU time used so far by the receiver's processes."""
        assert self.process is not None
        return sum(process_cpu_s(pid) for pid in process_tree(self.process.pid))

    def broker_cpu_s(self) -> float:
        """CPU time used so far by the broker the receiver publishes to (Talaria's)."""
        return 0.0

    def stop(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Storescp(Receiver):
    name = "storescp"
    aet = "STORESCP"

    def command(self) -> list[str]:
        return [STORESCP, "--fork", "-aet", self.aet, "-od", str(self.store), str(PORT)]


class Orthanc(Receiver):
    name = "orthanc"
    aet = "ORTHANC"

    def command(self) -> list[str]:
        config = self.work / "orthanc.json"
        config.write_text(
            json.dumps(
                {
                    "Name": "bench",
                    "StorageDirectory": str(self.store),
                    "IndexDirectory": str(self.store),
                    "DicomAet": self.aet,
                    "DicomPort": PORT,
                    "HttpPort": PORT + 1,
                    "RemoteAccessAllowed": False,
                    "DicomCheckCalledAet": False,
                    "StorageCompression": False,
                    "Plugins": [],
                }
            )
        )
        return [ORTHANC, str(config)]

    def delivered(self) -> int:
        index_files = {"index", "index-wal", "index-shm"}
        return sum(1 for p in self.store.rglob("*") if p.is_file() and p.name not in index_files)


class Talaria(Receiver):
    """Talaria as configured by default (answers once the broker acknowledged the event), with
    `WORKERS_PER_CORE` receiver processes per core."""

    name = "talaria"
    aet = "TALARIA"
    ack_after = "broker"

    def __init__(self, work: Path, broker: LocalBroker) -> None:
        super().__init__(work)
        self.broker = broker

    @property
    def bootstrap(self) -> str:
        return self.broker.layout.bootstrap

    def start(self) -> None:
        shutil.rmtree(self.journal.parent, ignore_errors=True)
        super().start()

    def broker_cpu_s(self) -> float:
        pid = self.broker.pid()
        assert pid is not None, "the broker stopped during the run"
        return process_cpu_s(pid)

    @property
    def journal(self) -> Path:
        """The first worker's journal; the others' are beside it."""
        return self.work / "journals" / self.name / "worker"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ingest", "run"]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "TALARIA_KAFKA_BOOTSTRAP": self.bootstrap,
            "TALARIA_TOPIC_PREFIX": TOPIC_PREFIX,
            "TALARIA_BLOB_DIR": str(self.store),
            "TALARIA_BLOB_MIN_FREE_BYTES": "0",
            "TALARIA_DICOM_PORT": str(PORT),
            "TALARIA_AE_TITLE": self.aet,
            "TALARIA_METRICS_PORT": str(PORT + 2),
            "TALARIA_JOURNAL_DIR": str(self.journal),
            "TALARIA_ACK_AFTER": self.ack_after,
            "TALARIA_DICOM_WORKERS": str(WORKERS_PER_CORE * (os.cpu_count() or 1)),
        }


class TalariaJournal(Talaria):
    """Talaria answering each C-STORE once its event is in the fsynced intake journal."""

    name = "talaria-journal"
    ack_after = "journal"


def stores(work: Path) -> Path:
    """Where the receivers store, a new folder per measurement, all removed only once the run
    is over (the default run keeps some 7 GB until then). Removing the last store before each
    start slowed every receiver's next file creations: on ext4 without a journal (as here),
    creating a file skips every inode freed in the last 30 s, reading each one's inode table
    entry. With 1 000 files just removed, that scan took about a tenth of Talaria's receiver
    CPU; Orthanc gained as much as Talaria from keeping the stores (10 kB images, 4 senders)."""
    return work / "stores"


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found += process_tree(int(child))
    return found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User and system CPU time of `pid` (all its threads) and of the children it reaped
    (storescp's forked association handlers); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return stat_cpu_s(stat, reaped_children=True)


def stat_cpu_s(stat: str, *, reaped_children: bool) -> float:
    """User and system CPU time in a /proc stat line, with that of the reaped children if
    `reaped_children`."""
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(ticks) for ticks in fields[11 : 15 if reaped_children else 13]) / _CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU time all cores spent running anything (user, nice, system, irq, softirq) since boot."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def vm_hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- one measurement ------------------------------------------------------------------------


def send(receiver: Receiver, files: list[Path], senders: int) -> float:
    """storescu x `senders` in parallel, each a contiguous share; wall time of them all."""
    shares = [files[n::senders] for n in range(senders)]
    began = time.perf_counter()
    processes = [
        subprocess.Popen(
            [STORESCU, "-aec", receiver.aet, "127.0.0.1", str(PORT), *map(str, share)],
            env={**os.environ, **DCMTK_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
    ]
    failures = [p.stderr.read() for p in processes if p.wait() != 0 and p.stderr]  # type: ignore[union-attr]
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{receiver.name}: storescu failed: {failures[0][-500:]!r}")
    return elapsed


def measure(
    receiver: Receiver, *, dataset: str, files: list[Path], senders: int, rep: int
) -> Result:
    receiver.start()
    try:
        machine, own, broker = machine_busy_s(), receiver.cpu_s(), receiver.broker_cpu_s()
        elapsed = send(receiver, files, senders)
        machine = machine_busy_s() - machine
        own = receiver.cpu_s() - own
        broker = receiver.broker_cpu_s() - broker
        time.sleep(0.2)
        rss = receiver.peak_rss_mb()
    finally:
        receiver.stop()
        # The next measurement starts on an idle disk: what this receiver left unflushed
        # (storescp) is written back now, not during the next one's sends.
        os.sync()
    per_instance_ms = 1000 / len(files)
    return Result(
        receiver=receiver.name,
        dataset=dataset,
        senders=senders,
        rep=rep,
        count=len(files),
        megabytes=sum(p.stat().st_size for p in files) / 1e6,
        elapsed_s=elapsed,
        delivered=receiver.delivered(),
        peak_rss_mb=rss,
        machine_cpu_ms=machine * per_instance_ms,
        receiver_cpu_ms=own * per_instance_ms,
        broker_cpu_ms=broker * per_instance_ms,
    )


# --- the run --------------------------------------------------------------------------------


@contextmanager
def kafka(work: Path) -> Iterator[LocalBroker]:
    """A broker as `talaria kafka start` runs one (JIT with C2, see `LocalBroker`), with the
    topics every Talaria receiver of the run uses. Topics made for each measurement, as
    before, kept the broker busy creating their 21 topics' partitions for a second after they
    were made (0.4-1.2 s of its CPU), during that measurement's sends: 0.75 ms of broker CPU
    per small instance instead of 0.22."""
    # A fresh broker each run, so that each run's log starts empty.
    shutil.rmtree(work / "kafka", ignore_errors=True)
    layout = BrokerLayout(home=work / "kafka", port=free_port(), controller_port=free_port())
    broker = LocalBroker(
        layout, libs=fetch_jars(BrokerSettings().kafka_cache_dir), optimizing_jit=True
    )
    broker.start()
    try:
        ensure_topics(LogSettings(kafka_bootstrap=layout.bootstrap, topic_prefix=TOPIC_PREFIX))
        yield broker
    finally:
        broker.stop()


WARM_UP_MIN_SENDS = 12
WARM_UP_MAX_SENDS = 80
WARM_UP_WINDOW = 4  # warmed once the JIT compilers used < 5 % of the broker's CPU over 4 sends
WARM_UP_COMPILING_SHARE = 0.05


def jit_compiler_cpu_s(pid: int) -> float:
    """CPU time of the JVM's JIT compiler threads (named "C1 CompilerThreadN", "C2 ...")."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith(("C1 CompilerThre", "C2 CompilerThre")):
            total += stat_cpu_s(stat, reaped_children=False)
    return total


def warm_up(broker: LocalBroker, work: Path, files: list[Path]) -> list[float]:
    """Send `files` through Talaria receivers until the broker's JIT compilers are done with
    the produce path, so that the measurements find a broker as compiled as a running
    installation's; return the broker's CPU ms per instance of each send.
    Unwarmed, the run measured the JIT compiler more than Talaria: over 10 kB instances from 4
    senders, a fresh broker spent 0.8 ms of CPU per instance at first and 0.22 ms once C2 had
    compiled. A warm-up that stopped once the broker's CPU per instance had stopped falling
    (by 10 % over 4 sends) still left C2 using 0.05-0.58 ms per instance in the first
    measurements. Each send goes to a new receiver, as each measurement's does: after a
    warm-up through one receiver, the broker still spent 0.3-0.7 ms per instance on the
    first sends from new ones."""
    pid = broker.pid()
    assert pid is not None, "the broker is not running"
    costs: list[float] = []
    compiling: list[float] = []
    while len(costs) < WARM_UP_MAX_SENDS:
        receiver = Talaria(work, broker)
        receiver.start()
        try:
            before, compilers_before = receiver.broker_cpu_s(), jit_compiler_cpu_s(pid)
            send(receiver, files, senders=4)
            costs.append((receiver.broker_cpu_s() - before) * 1000 / len(files))
            compiling.append((jit_compiler_cpu_s(pid) - compilers_before) * 1000 / len(files))
        finally:
            receiver.stop()
        print(
            f"broker warm-up: {costs[-1]:.2f} ms CPU/instance, {compiling[-1]:.2f} of it compiling",
            file=sys.stderr,
            flush=True,
        )
        recent = slice(-WARM_UP_WINDOW, None)
        if len(costs) >= WARM_UP_MIN_SENDS and sum(compiling[recent]) < (
            WARM_UP_COMPILING_SHARE * sum(costs[recent])
        ):
            break
    return costs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(args: argparse.Namespace) -> list[Result]:
    work = Path(args.work).resolve()
    data = {name: make_dataset(work / "data" / name, **DATASETS[name]) for name in args.datasets}
    shutil.rmtree(stores(work), ignore_errors=True)
    try:
        with kafka(work) as broker:
            warm_up(broker, work, data["small"] if "small" in data else next(iter(data.values())))
            shutil.rmtree(stores(work))
            time.sleep(inodes_recent_s())
            return measure_all(args, broker, work, data)
    finally:
        shutil.rmtree(stores(work), ignore_errors=True)


def inodes_recent_s() -> float:
    """How long ext4 without a journal treats a freed inode as recently freed (see `stores`):
    the dirty page expiry, plus 5 s for an inode table block not yet written back."""
    return int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100 + 5


def measure_all(
    args: argparse.Namespace, broker: LocalBroker, work: Path, data: dict[str, list[Path]]
) -> list[Result]:
    """Each receiver on each cell, `args.reps` times, the receivers' order rotating."""
    results: list[Result] = []
    available: dict[str, Receiver] = {
        "talaria": Talaria(work, broker),
        "talaria-journal": TalariaJournal(work, broker),
        "orthanc": Orthanc(work),
        "storescp": Storescp(work),
    }
    receivers = [available[name] for name in args.receivers]
    for rep in range(args.reps):
        order = receivers[rep % len(receivers) :] + receivers[: rep % len(receivers)]
        for dataset, files in data.items():
            for senders in args.senders:
                for receiver in order:
                    result = measure(
                        receiver, dataset=dataset, files=files, senders=senders, rep=rep
                    )
                    results.append(result)
                    print(json.dumps(asdict(result)), flush=True)
    return results


def report(results: list[Result]) -> str:
    """Median instances/s, MB/s and CPU per instance per receiver, with Talaria's ratios."""
    rows = [
        "| data set | senders | receiver | inst/s | MB/s | CPU ms/inst: machine, receiver, "
        "broker | peak RSS MB | delivered | Talaria / this |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(r.dataset, r.senders) for r in results})
    for dataset, senders in cells:
        group = [r for r in results if (r.dataset, r.senders) == (dataset, senders)]
        medians = {
            name: statistics.median(r.per_second for r in group if r.receiver == name)
            for name in dict.fromkeys(r.receiver for r in group)
        }
        for name, rate in medians.items():
            mine = [r for r in group if r.receiver == name]
            megabytes = rate * mine[0].megabytes / mine[0].count
            cpu = ", ".join(
                f"{statistics.median(getattr(r, part) for r in mine):.2f}"
                for part in ("machine_cpu_ms", "receiver_cpu_ms", "broker_cpu_ms")
            )
            ratio = medians.get("talaria", 0) / rate
            rows.append(
                f"| {dataset} | {senders} | {name} | {rate:.0f} | {megabytes:.1f} | {cpu} | "
                f"{max(r.peak_rss_mb for r in mine):.0f} | "
                f"{min(r.delivered for r in mine)}/{mine[0].count} | {ratio:.2f} |"
            )
    return "\n".join(rows)


def in_private_network(argv: list[str]) -> None:
    """Re-run this script in a network namespace with only loopback (receivers bind 0.0.0.0)."""
    script = f"ip link set lo up && exec {shlex.join(argv)}"
    os.execvp("unshare", ["unshare", "--net", "sh", "-c", script])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "talaria-bench-ingest"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--datasets", type=lambda t: t.split(","), default=["ct", "small"])
    parser.add_argument("--senders", type=lambda t: [int(n) for n in t.split(",")], default=[1, 4])
    parser.add_argument(
        "--receivers",
        type=lambda t: t.split(","),
        default=["talaria", "talaria-journal", "orthanc", "storescp"],
    )
    parser.add_argument("--no-netns", action="store_true", help="already isolated")
    parser.add_argument("--results", help="also write the JSON lines here")
    args = parser.parse_args()
    if not args.no_netns:
        in_private_network([sys.executable, "-m", "bench.ingest", *sys.argv[1:], "--no-netns"])
    results = run(args)
    if args.results:
        Path(args.results).write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    print(report(results))


if __name__ == "__main__":
    main()
