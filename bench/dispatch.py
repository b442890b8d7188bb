"""Forwarding throughput: Talaria's DICOM target beside DCMTK's storescu and Orthanc's forwarding.

The same series goes to a DCMTK `storescp` (writing files, restarted for every measurement):
  - `storescu`: DCMTK sending the files directly (the reference for a forwarder);
  - `talaria`: Talaria's DICOM target (its own SCU, TCP_NODELAY, contexts from the series)
    describing and sending the staged files, as the dispatcher does for a job;
  - `orthanc`: Orthanc 1.10 (Debian) holding the series and forwarding it with
    `POST /modalities/target/store` (what Orthanc auto-routing runs), timed from the request to
    its answer.
Scenarios interleave and rotate every repetition; compare ratios from one run. Every DCMTK
process runs with TCP_NODELAY=1. storescp and Orthanc listen on every interface, so run this in
a private network namespace:

    bash infra/isolated.sh .venv/bin/python -m bench.dispatch [--reps 3] [--datasets ct,small]
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
from pathlib import Path

import httpx

from bench.ingest import make_dataset
from executors.dispatch.staging import describe
from executors.dispatch.target import Batch
from executors.dispatch.targets import open_target
from tests.support import free_port, wait_until_listening

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DATASETS = {
    "ct": {"series": 1, "instances": 200, "rows": 512},
    "small": {"series": 1, "instances": 1000, "rows": 64},
}


@contextmanager
def target(work: Path) -> Iterator[tuple[int, Path]]:
    """A fresh storescp writing into an empty folder."""
    folder = work / "target"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        [STORESCP, "-aet", "TARGET", "-od", str(folder), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(port, process, timeout_s=30)
        yield port, folder
    finally:
        process.terminate()
        process.wait()


def by_storescu(files: list[Path], port: int) -> float:
    began = time.perf_counter()
    subprocess.run(
        [STORESCU, "-aec", "TARGET", "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - began


def by_talaria(files: list[Path], port: int) -> float:
    dicom = open_target(
        {"target_type": "dicom", "ip": "127.0.0.1", "port": port, "aet_target": "TARGET"}
    )
    began = time.perf_counter()
    batch = Batch(
        job_id="bench", study_uid="bench", instances=[describe(p) for p in files], tags={}
    )
    delivery = dicom.send(batch)
    elapsed = time.perf_counter() - began
    assert delivery.confirmed == len(files)
    return elapsed


class Orthanc:
    """Orthanc holding the data set, with the target as a DICOM modality."""

    def __init__(self, work: Path, files: list[Path]) -> None:
        self.work = work
        self.files = files
        self.http = free_port()

    @contextmanager
    def forwarding_to(self, port: int) -> Iterator[Callable[[], float]]:
        storage = self.work / "orthanc"
        shutil.rmtree(storage, ignore_errors=True)
        config = self.work / "orthanc.json"
        config.write_text(
            json.dumps(
                {
                    "Name": "bench",
                    "StorageDirectory": str(storage),
                    "IndexDirectory": str(storage),
                    "HttpPort": self.http,
                    "DicomPort": free_port(),
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "DicomModalities": {"target": ["TARGET", "127.0.0.1", port]},
                }
            )
        )
        process = subprocess.Popen(
            [ORTHANC, str(config)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_listening(self.http, process, timeout_s=60)
            with httpx.Client(base_url=f"http://127.0.0.1:{self.http}", timeout=600) as client:
                ids = [
                    client.post("/instances", content=p.read_bytes()).json()["ID"]
                    for p in self.files
                ]

                def forward() -> float:
                    began = time.perf_counter()
                    answer = client.post("/modalities/target/store", json={"Resources": ids})
                    answer.raise_for_status()
                    return time.perf_counter() - began

                yield forward
        finally:
            process.terminate()
            process.wait()


def measure(name: str, files: list[Path], work: Path) -> float:
    with target(work) as (port, folder):
        if name == "storescu":
            elapsed = by_storescu(files, port)
        elif name == "talaria":
            elapsed = by_talaria(files, port)
        else:
            with Orthanc(work, files).forwarding_to(port) as forward:
                elapsed = forward()
        received = sum(1 for _ in folder.iterdir())
    assert received == len(files), f"{name}: {received} of {len(files)} arrived"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", default=str(Path(tempfile.gettempdir()) / "talaria-bench-dispatch")
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--datasets", type=lambda t: t.split(","), default=["ct", "small"])
    args = parser.parse_args()
    work = Path(args.work)
    scenarios = ["storescu", "talaria", "orthanc"]
    for dataset in args.datasets:
        files = make_dataset(work / "data" / dataset, **DATASETS[dataset])
        rates: dict[str, list[float]] = {name: [] for name in scenarios}
        for rep in range(args.reps):
            order = scenarios[rep % 3 :] + scenarios[: rep % 3]
            for name in order:
                rates[name].append(len(files) / measure(name, files, work))
        median = {name: statistics.median(values) for name, values in rates.items()}
        print(f"\n{dataset}: {len(files)} instances, {args.reps} repetitions (median instances/s)")
        for name in scenarios:
            runs = ", ".join(f"{rate:.0f}" for rate in rates[name])
            print(f"  {name:9} {median[name]:8.1f}   runs: {runs}")
        print(f"  talaria / orthanc  = {median['talaria'] / median['orthanc']:.2f}")
        print(f"  talaria / storescu = {median['talaria'] / median['storescu']:.2f}")


if __name__ == "__main__":
    main()
