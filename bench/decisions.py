"""Decision throughput and latency: 200 rules over 10,000 completed series.

Two figures:
  - pure: `decide_series` in-process (rule evaluation + commands), decisions per second;
  - on the log: a real streams worker (`python -m streams`) against a broker of its own; the
    bench publishes `SeriesCompleted` facts and reads the commands back. Latency is the broker
    timestamp of the first command minus that of its completion (p50/p99); throughput is series
    decided per second from the first completion to the last command.
Usage (from the repository root): python -m bench.decisions [--series 10000] [--rules 200]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from infra.admin import ensure_topics
from infra.catalogue import (
    CATALOGUE,
    BlobReference,
    RuleSaved,
    SeriesCompleted,
    SettingsSaved,
    TargetSaved,
)
from infra.events import Envelope, decode
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.log import EventProducer
from infra.settings import BrokerSettings, LogSettings
from infra.topics import Topic, topic_name
from streams.config import SETTINGS_NAME, fold_all
from streams.decisions import decide_series
from tests.support import free_port

MODALITIES = ("CT", "MR", "PT", "US", "CR", "DX", "MG", "NM")


def rules(count: int) -> list[RuleSaved]:
    """Realistic rules: a modality, a description keyword, a station; about one match each."""
    return [
        RuleSaved(
            name=f"rule-{n:03d}",
            after={
                "rule": (
                    f"@Modality@ == '{MODALITIES[n % len(MODALITIES)]}' and "
                    f"'PROTO{n}' in @SeriesDescription@.upper() and "
                    f"@StationName@.startswith('ST')"
                ),
                "target": [f"target-{n % 10}"],
                "priority": ("normal", "urgent", "offpeak")[n % 3],
            },
        )
        for n in range(count)
    ]


def completed(number: int, *, rule_count: int) -> SeriesCompleted:
    study = f"1.2.826.0.1.{number // 4}"
    series = f"{study}.{number % 4}"
    blobs = [
        BlobReference(key=f"{study}/{series}/{i}.dcm", size=500_000, sha256="0" * 64)
        for i in range(20)
    ]
    protocol = number % rule_count
    return SeriesCompleted(
        study_uid=study,
        series_uid=series,
        completion_id=f"bench-{number}",
        instance_count=len(blobs),
        blobs=blobs,
        tags={
            "Modality": MODALITIES[protocol % len(MODALITIES)],
            "SeriesDescription": f"t1 proto{protocol} axial",
            "StationName": "ST01",
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
        },
    )


def config_events(rule_count: int) -> list[Envelope]:
    payloads = [
        SettingsSaved(name=SETTINGS_NAME, after={"series_complete_trigger": 3600}),
        *(TargetSaved(name=f"target-{n}", after={"target_type": "dummy"}) for n in range(10)),
        *rules(rule_count),
    ]
    return [Envelope(payload=p, source="bench", subject=p.partition_key()) for p in payloads]


def bench_pure(series: list[SeriesCompleted], rule_count: int) -> None:
    config = fold_all(
        rules(rule_count)
        + [TargetSaved(name=f"target-{n}", after={"target_type": "dummy"}) for n in range(10)]
    )
    began = time.perf_counter()
    commands = sum(len(decide_series(s, config)) - 1 for s in series)
    elapsed = time.perf_counter() - began
    print(
        f"pure     decide_series, {rule_count} rules: {len(series) / elapsed:>8,.0f} decisions/s "
        f"({len(series):,} in {elapsed:.2f} s, {commands:,} commands)"
    )


def start_broker(home: Path) -> LocalBroker:
    layout = BrokerLayout(home=home, port=free_port(), controller_port=free_port())
    broker = LocalBroker(layout, libs=fetch_jars(BrokerSettings().kafka_cache_dir), heap_mb=512)
    broker.start()
    return broker


def start_worker(settings: LogSettings, logfile: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TALARIA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TALARIA_TOPIC_PREFIX": settings.topic_prefix,
    }
    with logfile.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streams"], env=env, stdout=log, stderr=log)


class CommandReader:
    """Completion id -> broker timestamp (s) of its first command, read as they come."""

    def __init__(self, settings: LogSettings) -> None:
        self._consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "b"})
        partitions = []
        for topic in Topic:
            if topic.value.startswith("commands."):
                name = topic_name(topic, prefix=settings.topic_prefix)
                meta = self._consumer.list_topics(name, timeout=10).topics[name]
                partitions += [TopicPartition(name, p, 0) for p in meta.partitions]
        self._consumer.assign(partitions)
        self.first: dict[str, float] = {}

    def until(self, completion_ids: set[str], *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not completion_ids <= self.first.keys() and time.monotonic() < deadline:
            for message in self._consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    envelope = decode(message.value(), message.headers(), CATALOGUE)  # type: ignore[arg-type]
                    completion_id = getattr(envelope.payload, "completion_id", "")
                    self.first.setdefault(completion_id, message.timestamp()[1] / 1000)


def envelope(fact: SeriesCompleted) -> Envelope:
    return Envelope(payload=fact, source="bench", subject=fact.series_uid)


def percentiles(latencies_ms: list[float]) -> str:
    ordered = sorted(latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):,.1f} ms, p99 {p99:,.1f} ms"


def bench_on_the_log(
    series: list[SeriesCompleted], paced: list[SeriesCompleted], rule_count: int
) -> None:
    with tempfile.TemporaryDirectory() as home:
        broker = start_broker(Path(home) / "kafka")
        worker = None
        try:
            settings = LogSettings(kafka_bootstrap=broker.layout.bootstrap, topic_prefix="bench.")
            ensure_topics(settings)
            reader = CommandReader(settings)
            with EventProducer(settings, client_id="bench") as producer:
                producer.publish_all(config_events(rule_count))
                worker = start_worker(settings, Path(home) / "worker.log")
                warm = completed(10**9, rule_count=rule_count)
                producer.publish(envelope(warm))
                reader.until({warm.completion_id}, timeout_s=120)

                latencies = []
                for fact in paced:  # one at a time: the latency of a decision on an idle worker
                    producer.publish(envelope(fact))
                    sent = time.time()
                    reader.until({fact.completion_id}, timeout_s=30)
                    latencies.append((reader.first[fact.completion_id] - sent) * 1000)
                print(f"log      completion -> command, one at a time:   {percentiles(latencies)}")

                began = time.time()
                for start in range(0, len(series), 500):
                    producer.publish_all(envelope(fact) for fact in series[start : start + 500])
            reader.until({fact.completion_id for fact in series}, timeout_s=900)
            decided = [
                reader.first[fact.completion_id]
                for fact in series
                if fact.completion_id in reader.first
            ]
            elapsed = max(decided) - began
            print(
                f"log      {len(series):,} completions in a burst, {rule_count} rules: "
                f"{len(decided) / elapsed:,.0f} decisions/s "
                f"({len(decided):,} decided in {elapsed:.1f} s)"
            )
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=200)
    args = parser.parse_args()
    series = [completed(n, rule_count=args.rules) for n in range(args.series)]
    paced = [completed(args.series + n, rule_count=args.rules) for n in range(300)]
    bench_pure(series, args.rules)
    bench_on_the_log(series, paced, args.rules)


if __name__ == "__main__":
    main()
