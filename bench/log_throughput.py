"""Produce and consume throughput of Talaria's log helpers against a local single-node broker.

Starts its own broker in a temporary folder (cold start is timed too), then measures, side by
side with a bare confluent-kafka producer/consumer on the same topic layout:
  - publish_all in batches (waits for every acknowledgement),
  - publish one event at a time (acknowledged round trip, p50/p99),
  - ConsumerLoop decode + handle + offset store.
Usage (from the repository root): python -m bench.log_throughput [--events 100000]
"""

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from infra.admin import ensure_topics
from infra.catalogue import DispatchStarted
from infra.events import Envelope, encode
from infra.kafka.broker import BrokerLayout, LocalBroker, fetch_jars
from infra.log import ConsumerLoop, EventProducer
from infra.settings import BrokerSettings, LogSettings
from infra.topics import Topic, topic_name
from tests.support import free_port


def event(number: int) -> Envelope:
    job = f"job-{number:08d}"
    payload = DispatchStarted(job_id=job, target="pacs", attempt=1, instance_count=42)
    return Envelope(payload=payload, source="bench", subject=job)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10,.0f} events/s ({count:,} in {seconds:.2f} s)"


def bench_helpers(settings: LogSettings, total: int) -> None:
    envelopes = [event(i) for i in range(total)]
    with EventProducer(settings, client_id="bench") as producer:
        began = time.perf_counter()
        for start in range(0, total, 1000):
            producer.publish_all(envelopes[start : start + 1000])
        print(f"helpers  publish_all (batches of 1000): {rate(total, time.perf_counter() - began)}")

        latencies = []
        for envelope in envelopes[:500]:
            began = time.perf_counter()
            producer.publish(envelope)
            latencies.append((time.perf_counter() - began) * 1000)
        latencies.sort()
        print(
            "helpers  publish one at a time:        "
            f"p50 {statistics.median(latencies):.2f} ms, p99 {latencies[494]:.2f} ms "
            f"(≈{1000 / statistics.mean(latencies):,.0f} events/s)"
        )

        expected = total + 500
        seen = 0
        done = threading.Event()

        def handle(_envelope: Envelope) -> None:
            nonlocal seen
            seen += 1
            if seen >= expected:
                done.set()

        loop = ConsumerLoop(
            settings, group_id="bench", topics=[Topic.JOBS], handle=handle, producer=producer
        )
        thread = threading.Thread(target=loop.run)
        began = time.perf_counter()
        thread.start()
        done.wait(600)
        elapsed = time.perf_counter() - began
        loop.stop_requested.set()
        thread.join()
        print(
            f"helpers  ConsumerLoop decode+handle:    {rate(seen, elapsed)} (includes group join)"
        )


def bench_bare(settings: LogSettings, total: int) -> None:
    topic = topic_name(Topic.JOBS, prefix=settings.topic_prefix)
    records = [encode(event(i)) for i in range(total)]
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
        }
    )
    began = time.perf_counter()
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    print(f"bare     confluent produce+flush:       {rate(total, time.perf_counter() - began)}")

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "bare",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    began = time.perf_counter()
    while seen < total:
        seen += sum(1 for m in consumer.consume(1000, timeout=1) if m.error() is None)
    print(f"bare     confluent consume (no decode): {rate(seen, time.perf_counter() - began)}")
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        layout = BrokerLayout(home=Path(home), port=free_port(), controller_port=free_port())
        began = time.perf_counter()
        libs = fetch_jars(BrokerSettings().kafka_cache_dir)
        broker = LocalBroker(layout, libs=libs)
        broker.start()
        print(f"broker   cold start (format + start + ready): {time.perf_counter() - began:.2f} s")
        try:
            for name, run in (("helpers", bench_helpers), ("bare", bench_bare)):
                settings = LogSettings(kafka_bootstrap=layout.bootstrap, topic_prefix=f"{name}.")
                ensure_topics(settings)
                run(settings, args.events)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
