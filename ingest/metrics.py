"""Prometheus metrics of intake, served on ``/metrics`` by `talaria ingest run`."""

from prometheus_client import Counter, Gauge, Histogram

INSTANCES = Counter("talaria_ingest_instances", "Instances accepted.", ["intake"])
BYTES = Counter("talaria_ingest_bytes", "Bytes of accepted instances.", ["intake"])
REJECTIONS = Counter(
    "talaria_ingest_rejections", "Instances refused, by DICOM status.", ["intake", "status"]
)
ASSOCIATIONS = Counter("talaria_ingest_associations", "DICOM associations by outcome.", ["outcome"])
OPEN_ASSOCIATIONS = Gauge("talaria_ingest_open_associations", "DICOM associations now open.")
PUBLISH_SECONDS = Histogram(
    "talaria_ingest_publish_seconds",
    "Time from publishing InstanceReceived to the broker's acknowledgement.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOURNAL_BACKLOG = Gauge(
    "talaria_ingest_journal_backlog", "Accepted instances whose event waits in the journal."
)
