"""A projector in a process of its own, for the kill test: `run` projects until killed;
`dump` writes the tables (FINAL, in key order) as JSON lines to a file."""

import json
import sys
from pathlib import Path

from infra.log import EventProducer
from infra.settings import LogSettings
from tests.projections.conftest import open_store
from tests.projections.story import tables


def main() -> None:
    bootstrap, prefix, folder, database, mode = sys.argv[1:6]
    store = open_store(Path(folder), database=database)
    if mode == "dump":
        Path(sys.argv[6]).write_text(json.dumps(tables(store), default=str, sort_keys=True))
        return
    from projections.projector import Projector

    settings = LogSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        consumer_session_timeout_ms=6000,
        consumer_heartbeat_ms=1000,
        consumer_max_poll_interval_ms=10_000,
    )
    with EventProducer(settings, client_id="worker") as producer:
        Projector(settings, store=store, producer=producer, batch=100).run()


if __name__ == "__main__":
    main()
