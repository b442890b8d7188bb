"""Projection throughput and query latency on chDB.

Three parts:
1. End to end through Kafka: publish `--kafka-series` series worth of events to a local broker
   it starts itself, run the `Projector`, and time it from start until its group has
   committed everything (events/s, including consume, decode, fold, insert, offset commit).
2. Fold rate without Kafka: `--fold-events` events through `BatchWriter` (the projector's
   flush: load rows, fold, insert) in batches of `PROJECTOR_BATCH` (the default setting).
3. Scale: `--series` series (default 1,000,000) folded in memory with the same pure fold
   functions and bulk-inserted (every series is new, so nothing needs loading), then the
   archive search for typical filters, queue views and a timeline are timed (p50/p95 of 40
   runs each, after one warm-up run).

The mix per series (8 events): 3 InstanceReceived (each carrying the tag snapshot),
SeriesCompleted, RulesEvaluated, DispatchSeries, DispatchStarted, and DispatchSucceeded; one
series in 50 instead gets DispatchFailed(will_retry) and stays in the routing queue, one in 20
is discarded (SeriesDiscarded instead of the dispatch). Patients: 200,000 names over 2,000
family names; 6 modalities; 4 senders; series spread over 60 days.

Usage (from the repository root): python -m bench.projections [--series 1000000]
"""

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from infra.admin import ensure_topics
from infra.catalogue import (
    BlobReference,
    DispatchFailed,
    DispatchSeries,
    DispatchStarted,
    DispatchSucceeded,
    InstanceReceived,
    RulesEvaluated,
    SeriesCompleted,
    SeriesDiscarded,
)
from infra.events import Envelope, Payload
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.log import EventProducer
from infra.settings import BrokerSettings, LogSettings
from projections import queries
from projections.errors import LagUnknown
from projections.fold import At, JobRow, SeriesRow, fold_job, fold_series, job_key
from projections.journal import EVENT_COLUMNS, event_row, references
from projections.projector import Lag, Projector, broker_group
from projections.queries import ArchiveQuery, Page
from projections.settings import PROJECTOR_BATCH, ProjectionSettings
from projections.store import ClickHouse
from projections.writer import JOBS, SERIES, BatchWriter, Record
from tests.support import free_port

START = datetime(2025, 1, 1, tzinfo=UTC)
MODALITIES = ("CT", "MR", "CR", "US", "DX", "PT")
SENDERS = ("CT_ROOM1", "MR_3T", "XRAY_A", "PACS_MAIN")
FAMILY = [f"Fam{n:04d}" for n in range(2000)]
BLOB = BlobReference(key="b", size=1, sha256="0" * 64)


def tags_of(number: int, rng: random.Random) -> dict[str, str]:
    patient = rng.randrange(200_000)
    return {
        "PatientName": f"{FAMILY[patient % 2000]}^Given{patient // 2000:03d}",
        "PatientID": f"PID{patient:07d}",
        "AccessionNumber": f"ACC{number // 3:08d}",
        "Modality": MODALITIES[number % 6],
        "StudyDescription": rng.choice(("Head", "Chest", "Knee", "Abdomen", "Spine")),
        "SeriesDescription": rng.choice(("Axial", "Sagittal", "Coronal", "Localizer", "Dose")),
        "SeriesDate": "20250101",
    }


def series_events(number: int, rng: random.Random) -> list[tuple[Payload, datetime]]:
    study, series = f"1.2.{number // 3}", f"1.2.{number // 3}.{number}"
    tags = tags_of(number, rng)
    t0 = START + timedelta(seconds=number * 5.184)  # 1M series over 60 days
    job = f"job-{number}"
    facts: list[tuple[Payload, datetime]] = [
        (
            InstanceReceived(
                study_uid=study,
                series_uid=series,
                sop_uid=f"{series}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                blob=BLOB,
                calling_aet=SENDERS[number % 4],
                called_aet="TALARIA",
                tags=tags,
            ),
            t0 + timedelta(seconds=i),
        )
        for i in range(3)
    ]
    facts += [
        (
            SeriesCompleted(
                study_uid=study,
                series_uid=series,
                completion_id=f"c{number}",
                instance_count=3,
                blobs=[BLOB],
                tags=tags,
            ),
            t0 + timedelta(seconds=63),
        ),
    ]
    if number % 20 == 7:
        return [
            *facts,
            (
                RulesEvaluated(
                    study_uid=study, series_uid=series, completion_id=f"c{number}", matched_rules=[]
                ),
                t0 + timedelta(seconds=63.1),
            ),
            (
                SeriesDiscarded(study_uid=study, series_uid=series, reason="no rule matched"),
                t0 + timedelta(seconds=63.2),
            ),
        ]
    last: Payload = (
        DispatchFailed(job_id=job, target="pacs", attempt=1, reason="busy", will_retry=True)
        if number % 50 == 3
        else DispatchSucceeded(job_id=job, target="pacs", attempt=1, confirmed=3)
    )
    return [
        *facts,
        (
            RulesEvaluated(
                study_uid=study,
                series_uid=series,
                completion_id=f"c{number}",
                matched_rules=["to-pacs"],
            ),
            t0 + timedelta(seconds=63.1),
        ),
        (
            DispatchSeries(
                study_uid=study,
                job_id=job,
                rule="to-pacs",
                target="pacs",
                series_uids=[series],
                inputs=[BLOB],
            ),
            t0 + timedelta(seconds=63.2),
        ),
        (
            DispatchStarted(job_id=job, target="pacs", attempt=1, instance_count=3),
            t0 + timedelta(seconds=64),
        ),
        (last, t0 + timedelta(seconds=70 + number % 30)),
    ]


def envelopes(count: int, *, seed: int = 7) -> Iterator[Envelope]:
    rng = random.Random(seed)
    for number in range(count):
        for payload, moment in series_events(number, rng):
            yield Envelope(payload=payload, source="bench", subject="bench", occurred_at=moment)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} events/s ({count:,} events in {seconds:.1f} s)"


# --- part 1: through Kafka ----------------------------------------------------------------------


def bench_kafka(series: int, folder: Path) -> None:
    with tempfile.TemporaryDirectory() as home:
        layout = BrokerLayout(home=Path(home), port=free_port(), controller_port=free_port())
        broker = LocalBroker(layout, libs=fetch_jars(BrokerSettings().kafka_cache_dir))
        broker.start()
        try:
            settings = LogSettings(kafka_bootstrap=layout.bootstrap, topic_prefix="bench.")
            ensure_topics(settings)
            store = ClickHouse.open(
                ProjectionSettings(
                    clickhouse_url=f"chdb://{folder}", clickhouse_database="kafka_bench"
                ).clickhouse()
            )
            store.migrate()
            events = list(envelopes(series, seed=11))
            with EventProducer(settings, client_id="bench") as producer:
                for start in range(0, len(events), 5000):
                    producer.publish_all(events[start : start + 5000])
                projector = Projector(settings, store=store, producer=producer)
                lag = Lag(settings, group=broker_group(settings, 0))
                # The log's end is fixed once published: read it once, not on every check.
                ends = lag.ends()
                began = time.perf_counter()
                projector.start()
                while not caught_up(lag, ends):
                    time.sleep(0.2)
                elapsed = time.perf_counter() - began
                projector.stop()
                lag.close()
            print(f"projector via Kafka ({series:,} series): {rate(len(events), elapsed)}")
        finally:
            broker.stop()


def caught_up(lag: Lag, ends: dict[tuple[str, int], tuple[int, int]]) -> bool:
    try:
        return lag.behind(ends) == 0
    except LagUnknown:  # the group's coordinator is still loading
        return False


# --- part 2: scale ------------------------------------------------------------------------------


def fill(store: ClickHouse, series: int) -> None:
    writer = BatchWriter(store, cache_rows=200_000)
    batch: list[Record] = []
    total = 0
    began = time.perf_counter()
    for envelope in envelopes(series):
        batch.append(Record(envelope=envelope, topic="bench", partition=0, offset=total))
        total += 1
        if len(batch) == PROJECTOR_BATCH:
            writer.apply(batch)
            batch = []
            if total % 500_000 == 0:
                print(f"  folded {total:,} events, {rate(total, time.perf_counter() - began)}")
    writer.apply(batch)
    print(f"fold + insert without Kafka: {rate(total, time.perf_counter() - began)}")


def bulk_fill(store: ClickHouse, series: int) -> None:
    """The same rows as the projector would write, folded in memory (every series is new, so
    no rows need loading) and inserted 100,000 at a time: builds a 1M-series archive quickly."""
    began = time.perf_counter()
    rng = random.Random(7)
    series_rows, job_rows, event_rows = [], [], []
    offset = 0
    for number in range(series):
        current = SeriesRow(series_uid=f"1.2.{number // 3}.{number}")
        job: JobRow | None = None
        for payload, moment in series_events(number, rng):
            envelope = Envelope(
                payload=payload, source="bench", subject="bench", occurred_at=moment
            )
            at = At(partition_key="bench/0", offset=offset)
            event_rows.append(
                event_row(envelope, references(envelope), topic="bench", partition=0, offset=offset)
            )
            offset += 1
            if job_key(payload) is not None:
                job = fold_job(job or JobRow(job_id=f"job-{number}", target="pacs"), envelope, at)
            current = fold_series(
                current,
                envelope,
                at,
                job=job if job_key(payload) is not None else None,
            )
        series_rows.append(SERIES.as_tuple(current))
        if job is not None:
            job_rows.append(JOBS.as_tuple(job))
        if len(series_rows) >= 100_000:
            _bulk_insert(store, series_rows, job_rows, event_rows)
    _bulk_insert(store, series_rows, job_rows, event_rows)
    print(
        f"bulk fill of {series:,} series ({offset:,} events) in {time.perf_counter() - began:.0f} s"
    )


def _bulk_insert(store: ClickHouse, series_rows: list, job_rows: list, event_rows: list) -> None:  # type: ignore[type-arg]
    store.insert("series", series_rows, columns=SERIES.columns)
    store.insert("jobs", job_rows, columns=JOBS.columns)
    store.insert("events", event_rows, columns=EVENT_COLUMNS)
    for rows in (series_rows, job_rows, event_rows):
        rows.clear()


def latency(name: str, action: Callable[[], object], *, runs: int = 40) -> None:
    action()  # warm
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        timings.append((time.perf_counter() - began) * 1000)
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(f"  {name:<55} p50 {statistics.median(timings):7.1f} ms   p95 {p95:7.1f} ms")


def bench_queries(store: ClickHouse) -> None:
    page = Page(limit=50)
    week = {
        "received_from": START + timedelta(days=20),
        "received_until": START + timedelta(days=27),
    }
    typical = {
        "patient name prefix 'fam0042'": ArchiveQuery(patient_name="fam0042"),
        "patient name prefix 'given01' (any component)": ArchiveQuery(patient_name="given01"),
        "patient ID prefix 'pid00123'": ArchiveQuery(patient_id="pid00123"),
        "accession exact": ArchiveQuery(accession_number="ACC00123456"),
        "series UID exact": ArchiveQuery(series_uid="1.2.123456.370370"),
        "modality MR + one week": ArchiveQuery(modality="MR", **week),  # type: ignore[arg-type]
        "status routing (dispatch retrying)": ArchiveQuery(status="routing"),
        "description 'knee' + sender": ArchiveQuery(description="knee", sender_aet="MR_3T"),
        "no filter, newest first": ArchiveQuery(),
    }
    print("archive search (page of 50):")
    for name, query in typical.items():
        latency(name, partial(queries.search_archive, store, query, page))
    print("queue views and timelines:")
    latency("routing queue (first page)", lambda: queries.routing_queue(store, page))
    latency("failures (first page)", lambda: queries.failures(store, page))
    latency("series timeline", lambda: queries.series_timeline(store, "1.2.123456.370370"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1_000_000)
    parser.add_argument("--kafka-series", type=int, default=25_000)
    parser.add_argument("--folder", type=Path, default=None, help="keep chDB data here")
    parser.add_argument(
        "--fold-events", type=int, default=400_000, help="events for the BatchWriter rate"
    )
    parser.add_argument("--skip-fill", action="store_true", help="reuse a filled --folder")
    parser.add_argument("--optimize", action="store_true", help="merge the series parts first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch) / "chdb"
        if args.kafka_series:
            bench_kafka(args.kafka_series, folder)
        store = ClickHouse.open(
            ProjectionSettings(
                clickhouse_url=f"chdb://{folder}", clickhouse_database="fold_bench"
            ).clickhouse()
        )
        if args.fold_events:
            store.migrate()
            fill(store, args.fold_events // 8)
            store.command("DROP DATABASE {db}")
        store = store.with_database("bench")  # the 1M series a --skip-fill run reuses
        store.migrate()
        if not args.skip_fill:
            bulk_fill(store, args.series)
        if args.optimize:
            store.command("OPTIMIZE TABLE {db}.series FINAL")
        counts = store.select("SELECT count() FROM {db}.series FINAL").rows[0][0]
        print(f"series rows: {counts:,}")
        bench_queries(store)


if __name__ == "__main__":
    main()
