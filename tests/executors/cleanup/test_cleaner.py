"""The cleaner on the real log and a real blob folder: done series go, work in progress stays."""

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from executors.cleanup.cleaner import CleanupSettings
from executors.cleanup.service import CleanupService
from infra.blobstore import FolderBlobStore
from infra.catalogue import BlobsPurged
from infra.kafka.broker import LocalBroker
from infra.topics import Topic
from tests.conftest import settings_for
from tests.executors.cleanup.story import DAY, NOW, Series, files_under, stored_output
from tests.support import publish, reading

pytestmark = pytest.mark.integration


def window(start: timedelta, end: timedelta) -> str:
    """An off-peak window relative to the local time now."""
    local = datetime.now().astimezone()
    return f"{local + start:%H:%M}-{local + end:%H:%M}"


OPEN_NOW = window(-timedelta(hours=1), timedelta(hours=1))
CLOSED_NOW = window(timedelta(hours=2), timedelta(hours=3))


class Site:
    """A blob folder holding six series in every state a series can be in, and their log."""

    def __init__(self, broker: LocalBroker, tmp_path: Path) -> None:
        self.log_settings = settings_for(broker)
        self.blob_dir = tmp_path / "blobs"
        self.data_dir = tmp_path / "data"
        store = FolderBlobStore(self.blob_dir, min_free_bytes=0)
        self.sent, self.dropped, self.refused, self.stuck, self.fresh, self.processed = (
            Series.received(n, store=store) for n in range(1, 7)
        )
        self.output = stored_output(store, "process-job")
        publish(
            self.log_settings,
            [
                *self.sent.dispatched(NOW - 4 * DAY),
                *self.dropped.discarded(NOW - 5 * DAY),
                *self.refused.dispatched(NOW - 4 * DAY, outcome="failed"),
                *self.stuck.dispatched(NOW - 4 * DAY, outcome="pending"),
                *self.fresh.dispatched(NOW - timedelta(hours=1)),
                *self.processed.processed(NOW - 6 * DAY, [self.output]),
            ],
        )

    def settings(self, **overrides: Any) -> CleanupSettings:
        return CleanupSettings(
            **self.log_settings.model_dump(exclude={"data_dir"}),
            data_dir=self.data_dir,
            blob_dir=self.blob_dir,
            blob_min_free_bytes=0,
            cleanup_interval_s=0.3,
            **overrides,
        )

    def files_of(self, *series: Series) -> set[str]:
        return {blob.key for one in series for blob in one.blobs}


@pytest.fixture
def site(kafka_broker: LocalBroker, tmp_path: Path) -> Site:
    return Site(kafka_broker, tmp_path)


def test_in_the_off_peak_window_done_series_past_retention_are_purged_and_nothing_else(
    site: Site,
) -> None:
    settings = site.settings(offpeak_window=OPEN_NOW, emergency_clean_percent=100)
    with reading(settings, [Topic.SERIES]) as log, CleanupService(settings):
        log.wait(lambda r: len(r.of(BlobsPurged)) == 3, timeout_s=60, what="three purges")
        time.sleep(1.5)  # a few more sweeps purge nothing more
    purged = {fact.series_uid: fact for fact in log.of(BlobsPurged)}
    assert purged.keys() == {
        site.processed.series_uid,
        site.dropped.series_uid,
        site.sent.series_uid,
    }
    processed = purged[site.processed.series_uid]
    assert processed.blob_count == 3  # its two instances and the module's output
    assert processed.bytes_freed == sum(b.size for b in site.processed.blobs) + site.output.size
    assert processed.completion_ids == [site.processed.completion_id]
    assert {fact.reason for fact in purged.values()} == {"retention"}
    # The failed job's inputs, the pending job's and the fresh series are all still there.
    assert files_under(site.blob_dir) == site.files_of(site.refused, site.stuck, site.fresh)
    assert not (site.blob_dir / "studies" / site.sent.study_uid).exists()  # empty folders go too


def test_outside_the_window_nothing_goes_unless_the_disk_is_past_its_emergency_watermark(
    site: Site,
) -> None:
    everything = files_under(site.blob_dir)
    calm = site.settings(offpeak_window=CLOSED_NOW, emergency_clean_percent=100)
    with CleanupService(calm):
        time.sleep(2)  # several sweeps, all outside the window
    assert files_under(site.blob_dir) == everything
    # Any disk is past a watermark of 0.01 %: the cleaner acts now, without the retention.
    full = site.settings(offpeak_window=CLOSED_NOW, emergency_clean_percent=0.01)
    with reading(full, [Topic.SERIES]) as log, CleanupService(full):
        log.wait(lambda r: len(r.of(BlobsPurged)) == 4, timeout_s=60, what="four purges")
        time.sleep(1)
    # In the order the cleaner decided (studies sit on different partitions of the topic).
    purges = sorted(log.envelopes(BlobsPurged), key=lambda pair: pair[0].occurred_at)
    facts = [envelope.payload for envelope, _ in purges]
    assert {fact.reason for fact in facts} == {"emergency"}  # type: ignore[attr-defined]
    # The longest settled first; the fresh series too, but never the failed or pending inputs.
    assert [fact.series_uid for fact in facts] == [  # type: ignore[attr-defined]
        site.processed.series_uid,
        site.dropped.series_uid,
        site.sent.series_uid,
        site.fresh.series_uid,
    ]
    assert files_under(site.blob_dir) == site.files_of(site.refused, site.stuck)
