"""End to end: a CT study through Talaria and through Orthanc auto-routing, in one run.

The same study (one series, 512x512 CT, 500 instances by default) is sent with DCMTK `storescu`
to each router, which forwards it, once the series is stable, to a DCMTK `storescp` target
(restarted empty for every measurement):
  - `talaria`: `talaria up` (every service, its own broker), a rule routing everything to the
    target, `series_complete_trigger` = the stable age;
  - `orthanc`: Orthanc 1.10 (Debian) with a Lua `OnStableSeries` script that C-STOREs the series to
    the target (`RestApiPost('/modalities/target/store', seriesId)`), `StableAge` = the same age.
Each repetition sends a fresh study (new UIDs) to both, in alternating order. Measured from the
target's file times: `latency` = last file at the target - storescu exit (the last instance
received and acknowledged) - stable age; `e2e` = last file at the target - storescu start;
`throughput` = instances / e2e (receive to target). For Talaria it also prints where the time
went (`--budget`): each hop's event time on the log (the last `InstanceReceived`,
`SeriesCompleted`, `DispatchSeries`, `DispatchStarted`, `DispatchSucceeded`) and the last file
at the target, relative to storescu's exit, and the CPU seconds each process of the stack used
from storescu's start to the last file. storescp and Orthanc listen on every interface, so run
it in a private network namespace:

    bash infra/isolated.sh .venv/bin/python -m bench.e2e [--reps 2] [--instances 500]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.dispatch import DCMTK_ENV, ORTHANC, STORESCU, target
from bench.ingest import make_dataset, process_cpu_s
from infra.catalogue import (
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    InstanceReceived,
    SeriesCompleted,
)
from infra.events import Payload
from infra.settings import LogSettings
from infra.topics import Topic
from tests.e2e.stack import Stack, talaria_up
from tests.support import free_port, reading, serving

LUA_ON_STABLE_SERIES = """
function OnStableSeries(seriesId, tags, metadata)
   RestApiPost('/modalities/target/store', seriesId)
end
"""


HOPS: tuple[tuple[str, type[Payload]], ...] = (
    ("last InstanceReceived", InstanceReceived),
    ("SeriesCompleted", SeriesCompleted),
    ("DispatchSeries", DispatchSeries),
    ("DispatchStarted", DispatchStarted),
    ("DispatchSucceeded", DispatchSucceeded),
)


@dataclass(frozen=True)
class Run:
    latency_s: float
    e2e_s: float
    throughput: float
    began: float
    sent: float
    last: float


def processes(root: int) -> dict[int, str]:
    """`root` and its descendants by pid, each named by its command (`ui ingest run`: ingest)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        words = [word.decode(errors="replace") for word in argv if word]
        if "ui" in words and words.index("ui") + 1 < len(words):
            names[int(entry.name)] = words[words.index("ui") + 1]
        else:
            names[int(entry.name)] = Path(words[0]).name if words else "?"
    family = {root}
    while grown := {pid for pid, parent in parents.items() if parent in family} - family:
        family |= grown
    return {pid: names[pid] for pid in family if pid in names}


def cpu_seconds(family: dict[int, str]) -> dict[str, float]:
    """CPU seconds (see `process_cpu_s`) each named process has used so far."""
    used: dict[str, float] = {}
    for pid, name in family.items():
        used[name] = used.get(name, 0.0) + process_cpu_s(pid)
    return used


def budget(
    stack: Stack, run: Run, *, instances: int, timeout_s: float = 60
) -> list[tuple[str, float]]:
    """Each hop's latest event time since `run` began, relative to storescu's exit (read after
    the run, so that reading costs the stack nothing while it works)."""
    settings = LogSettings(kafka_bootstrap=stack.bootstrap)
    topics = [Topic.INSTANCES, Topic.SERIES, Topic.DISPATCH_NORMAL, Topic.JOBS]
    with reading(settings, topics) as reader:

        def times(kind: type[Payload]) -> list[float]:
            return [
                envelope.occurred_at.timestamp()
                for envelope, _ in reader.envelopes(kind)
                if envelope.occurred_at.timestamp() >= run.began
            ]

        reader.wait(
            lambda _: (
                len(times(InstanceReceived)) >= instances and all(times(kind) for _, kind in HOPS)
            ),
            timeout_s=timeout_s,
            what="every event of the run",
        )
        hops = [(label, max(times(kind)) - run.sent) for label, kind in HOPS]
    return sorted([*hops, ("last file at the target", run.last - run.sent)], key=lambda h: h[1])


def through(router_port: int, files: list[Path], folder: Path, *, stable_age_s: float) -> Run:
    """Send `files` to the router and wait for all of them at the target."""
    began = time.time()
    subprocess.run(
        [STORESCU, "-aec", "ROUTER", "127.0.0.1", str(router_port), *map(str, files)],
        env=DCMTK_ENV,
        check=True,
        capture_output=True,
    )
    sent = time.time()
    deadline = time.monotonic() + 600
    while sum(1 for _ in folder.iterdir()) < len(files):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(1 for _ in folder.iterdir())} of {len(files)} arrived")
        time.sleep(0.01)
    last = max(path.stat().st_mtime for path in folder.iterdir())
    return Run(
        latency_s=last - sent - stable_age_s,
        e2e_s=last - began,
        throughput=len(files) / (last - began),
        began=began,
        sent=sent,
        last=last,
    )


@contextmanager
def talaria(work: Path, *, stable_age_s: float) -> Iterator[tuple[Stack, Callable[[int], int]]]:
    """The stack, up once; `route_to(port)` points its rule at a target and gives the DICOM port."""
    shutil.rmtree(work / "talaria", ignore_errors=True)
    with talaria_up(work / "talaria", TALARIA_AE_TITLE="ROUTER") as stack:

        def route_to(port: int) -> int:
            config = work / "talaria" / "routing.yaml"
            target = {"target_type": "dicom", "ip": "127.0.0.1", "port": port}
            config.write_text(
                yaml.safe_dump(
                    {
                        "settings": {"series_complete_trigger": stable_age_s},
                        "targets": {"target": {**target, "aet_target": "TARGET"}},
                        "rules": {"all": {"rule": "True", "action": "route", "target": "target"}},
                    }
                )
            )
            applied = stack.talaria("config", "apply", str(config))
            if applied.returncode != 0:
                raise RuntimeError(applied.stderr)
            return stack.dicom_port

        yield stack, route_to


@contextmanager
def orthanc(work: Path, target_port: int, *, stable_age_s: float) -> Iterator[int]:
    """Orthanc with an empty storage, routing stable series to the target; its DICOM port."""
    storage = work / "orthanc"
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    script = work / "route_series.lua"
    script.write_text(LUA_ON_STABLE_SERIES)
    dicom, http = free_port(), free_port()
    config = work / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "StorageCompression": False,
                "HttpPort": http,
                "RemoteAccessAllowed": False,
                "DicomPort": dicom,
                "DicomAet": "ROUTER",
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "DicomModalities": {"target": ["TARGET", "127.0.0.1", target_port]},
                "StableAge": round(stable_age_s),
                "LuaScripts": [str(script)],
            }
        )
    )
    with serving([ORTHANC, str(config)], port=dicom, timeout_s=60, env=DCMTK_ENV):
        yield dicom


def load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "talaria-bench-e2e"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--stable-age", type=int, default=1, help="seconds (Orthanc: whole)")
    parser.add_argument(
        "--budget",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print Talaria's per-hop times and per-process CPU for each repetition",
    )
    args = parser.parse_args()
    work = Path(args.work)
    age = float(args.stable_age)
    studies = [
        make_dataset(
            work / "data" / f"{args.instances}x{args.rows}-{rep}",
            series=1,
            instances=args.instances,
            rows=args.rows,
        )
        for rep in range(args.reps)
    ]
    runs: dict[str, list[Run]] = {"talaria": [], "orthanc": []}
    with talaria(work, stable_age_s=age) as (stack, route_to):
        for rep, files in enumerate(studies):
            order = ["talaria", "orthanc"] if rep % 2 == 0 else ["orthanc", "talaria"]
            for name in order:
                with target(work) as (port, folder):
                    if name == "talaria":
                        router = route_to(port)
                        family = processes(stack.process.pid)
                        before = cpu_seconds(family)
                        run = through(router, files, folder, stable_age_s=age)
                        used = cpu_seconds(family)
                    else:
                        with orthanc(work, port, stable_age_s=age) as router:
                            run = through(router, files, folder, stable_age_s=age)
                runs[name].append(run)
                print(
                    f"rep {rep + 1} {name:8} latency {run.latency_s:6.2f} s  e2e {run.e2e_s:6.2f} s"
                    f"  {run.throughput:6.1f} instances/s  (load {load()})",
                    flush=True,
                )
                if name == "talaria" and args.budget:
                    for label, at in budget(stack, run, instances=len(files)):
                        print(f"    {at:+7.2f} s  {label}")
                    print(f"    CPU s from storescu start to the last file ({run.e2e_s:.2f} s):")
                    for process, seconds in sorted(used.items(), key=lambda u: -u[1]):
                        spent = seconds - before.get(process, 0.0)
                        if spent >= 0.01:
                            print(f"    {spent:7.2f}  {process}")

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[name])

    print(
        f"\n{args.instances} instances {args.rows}x{args.rows}, stable age {age:.0f} s, "
        f"{args.reps} repetitions (medians); load {load()}"
    )
    print(f"  {'':28} {'talaria':>9} {'orthanc':>9} {'ratio':>7}")
    for field, label in (
        ("latency_s", "latency - stable age (s)"),
        ("e2e_s", "end to end (s)"),
        ("throughput", "throughput (instances/s)"),
    ):
        ours, theirs = median("talaria", field), median("orthanc", field)
        print(f"  {label:28} {ours:9.2f} {theirs:9.2f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
