"""The operator's day in a real browser (Debian's chromium driven by Playwright) against the real
stack (`talaria up` on the session broker): first login and password change, a DICOM target
(DCMTK storescp) and a rule made with the forms, a study sent with storescu that moves through
the queue to done in the archive, a failed dispatch retried from the failures queue once the
target is back, and an attacker-controlled PatientName that renders as text. Screenshots of each
page go to `tests/ui/artifacts/` (look at them: a page that works but looks broken is not done).
"""

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from infra.kafka.broker import LocalBroker
from streams.config import ConfigDocument, Configuration, changes
from tests.conftest import settings_for
from tests.e2e.stack import ADMIN_PASSWORD, Stack, talaria_up
from tests.executors.dispatch.conftest import storescp_command
from tests.executors.query.conftest import write_studies
from tests.ingest.dicom_files import write_study
from tests.support import DCMTK, free_port, publish, serving, wait_for
from tests.ui.conftest import NEW_ADMIN_PASSWORD, Ui, query_worker
from ui.services import FIRST_ADMIN

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
NEW_PASSWORD = "browser-chosen-password"
XSS_NAME = "<script>window.xss=1</script>^<img src=x onerror=window.xss=2>"
PAGE_TIMEOUT_S = 60
expect.set_options(timeout=20_000)  # the machine running the tests may be busy


@pytest.fixture
def stack(kafka_broker: LocalBroker, tmp_path: Path) -> Iterator[Stack]:
    """`talaria up` on the session broker: series complete after 1 s, one dispatch attempt."""
    settings = settings_for(kafka_broker)
    quick = ConfigDocument.model_validate({"settings": {"series_complete_trigger": 1}})
    publish(settings, changes(quick, Configuration(), actor="test", source="test"))
    with talaria_up(
        tmp_path,
        TALARIA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TALARIA_TOPIC_PREFIX=settings.topic_prefix,
        TALARIA_CONSUMER_SESSION_TIMEOUT_MS=str(settings.consumer_session_timeout_ms),
        TALARIA_CONSUMER_HEARTBEAT_MS=str(settings.consumer_heartbeat_ms),
        TALARIA_CONSUMER_MAX_POLL_INTERVAL_MS=str(settings.consumer_max_poll_interval_ms),
        TALARIA_RETRY_MAX_ATTEMPTS="1",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))  # chromium writes into $HOME
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def shown(page: Page, url: str, locator: Callable[[Page], Locator], text: str) -> Locator:
    """Reload `url` until the locator contains `text` (the projections catch up)."""
    page.goto(url)
    for _ in range(PAGE_TIMEOUT_S * 2):
        found = locator(page)
        if found.count() and text in found.first.inner_text():
            return found.first
        page.wait_for_timeout(500)
        page.reload()
    expect(locator(page).first).to_contain_text(text)  # fails with what the page shows
    return locator(page).first


def send(files: list[Path], port: int) -> None:
    sent = subprocess.run(
        [f"{DCMTK}/storescu", "-aec", "TALARIA", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr


def series_row(series_uid: str) -> Callable[[Page], Locator]:
    return lambda page: page.locator("tr", has=page.locator(f'a[href="/archive/{series_uid}"]'))


def test_an_operators_day(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    url = stack.ui_url
    pacs_port, pacs = free_port(), tmp_path / "pacs"
    pacs.mkdir()
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))

    # First login: a wrong password is refused, the right one must be changed at once.
    page.goto(url + "/")
    expect(page).to_have_url(url + "/login")
    shot(page, "01-login")
    page.fill("#username", FIRST_ADMIN)
    page.fill("#password", "wrong password")
    page.click("main button[type=submit]")
    expect(page.locator(".form-error")).to_have_text("wrong user name or password")
    page.fill("#username", FIRST_ADMIN)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("main button[type=submit]")
    expect(page).to_have_url(url + "/password")
    shot(page, "02-change-password")
    page.fill("#f-current_password", ADMIN_PASSWORD)
    page.fill("#f-new_password", NEW_PASSWORD)
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")

    # A DICOM target (storescp) and a rule routing CT there, made with the forms.
    page.goto(url + "/targets/new?type=dicom")
    page.fill("#f-name", "pacs")
    page.fill("#f-ip", "127.0.0.1")
    page.fill("#f-port", str(pacs_port))
    page.fill("#f-aet_target", "STORE")
    shot(page, "04-target-editor")
    page.click("form[data-api] button[type=submit]")
    expect(page).to_have_url(url + "/targets")
    expect(page.locator("table")).to_contain_text("pacs")
    shot(page, "05-targets")

    page.goto(url + "/rules/new")
    page.fill("#f-name", "ct-to-pacs")
    page.fill("#f-rule", "@Modality@ == 'CT'")
    page.fill("#f-target", "pacs")
    page.fill("#t-tags", "Modality = CT")
    page.click("form[data-rule-tester] button[type=submit]")
    expect(page.locator("#test-result")).to_have_text("Match")
    shot(page, "06-rule-editor")
    page.click("form[data-method=POST][data-next] button[type=submit]")
    expect(page).to_have_url(url + "/rules")
    expect(page.locator("table")).to_contain_text("ct-to-pacs")
    expect(page.locator("table")).to_contain_text("enabled")
    shot(page, "07-rules")

    # A study whose PatientName is a script: it waits in the suspended target's queue, then
    # goes to the PACS once resumed, and shows as done in the archive with its timeline.
    page.goto(url + "/queue")
    page.fill("#f-queue", "target:pacs")
    page.click("form[data-api='/api/queue/suspend'] button[type=submit]")
    expect(page.locator("section", has_text="Suspended queues")).to_contain_text("target:pacs")
    first = write_study(tmp_path / "first", series=1, instances=2)
    for path in first:
        subprocess.run(
            [f"{DCMTK}/dcmodify", "-nb", "-m", f"PatientName={XSS_NAME}", str(path)], check=True
        )
    with serving(storescp_command(pacs_port, pacs), port=pacs_port):
        send(first, stack.dicom_port)
        routing = shown(
            page, url + "/queue", lambda p: p.locator("section", has_text="Routing"), "pacs"
        )
        expect(routing).to_contain_text("ct-to-pacs")
        shot(page, "10-queue")
        page.locator("li", has_text="target:pacs").get_by_role("button", name="Resume").click()
        expect(page.locator("section", has_text="Suspended queues")).to_contain_text(
            "Nothing is suspended"
        )
        first_uid = pydicom.dcmread(first[0]).SeriesInstanceUID
        row = shown(page, url + "/archive", series_row(first_uid), "done")
        assert len(list(pacs.iterdir())) == 2
        expect(row.locator("a")).to_have_text(XSS_NAME)
        assert page.evaluate("window.xss") is None, "the tag value ran as script"
        shot(page, "08-archive")
        row.locator("a").click()
        expect(page.locator("h1")).to_contain_text(XSS_NAME)
        assert page.evaluate("window.xss") is None
        timeline = page.locator("section", has_text="Timeline")
        for event in ("InstanceReceived", "SeriesCompleted", "DispatchSucceeded"):
            expect(timeline).to_contain_text(event)
        shot(page, "09-archive-detail")

    # The PACS is down: the next series fails for good and waits in the failures queue...
    second = write_study(tmp_path / "second", series=1, instances=1)
    second_uid = pydicom.dcmread(second[0]).SeriesInstanceUID
    send(second, stack.dicom_port)
    failures = shown(
        page, url + "/queue", lambda p: p.locator("section", has_text="Failures"), "pacs"
    )
    expect(failures).to_contain_text("failed")
    shot(page, "11-failures")
    # ... until the PACS is back and the operator retries it.
    with serving(storescp_command(pacs_port, pacs), port=pacs_port):
        with page.expect_navigation():  # the page reloads once the retry is on the log
            failures.get_by_role("button", name="Retry").click()
        shown(page, url + "/archive", series_row(second_uid), "done")
        assert len(list(pacs.iterdir())) == 3
    page.goto(url + "/queue")
    expect(page.locator("section", has_text="Failures")).to_contain_text("Nothing here")

    for path, name in [
        ("/", "03-overview"),
        ("/modules", "12-modules"),
        ("/audit", "13-audit"),
        ("/users", "14-users"),
        ("/upload", "15-upload"),
    ]:
        page.goto(url + path)
        shot(page, name)
    page.goto(url + "/audit")
    for change in ("TargetSaved", "RuleSaved", "QueueSuspended", "JobRetryRequested"):
        expect(page.locator("table")).to_contain_text(change)
    page.close()
    assert script_errors == []


def test_a_query_job_submitted_from_a_file_on_the_query_page(
    ui: Ui, admin: httpx.Client, browser: Browser, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    write_studies(archive, ["ACC1"], series=1, instances=2)
    created = admin.post(
        "/api/targets",
        json={
            "name": "archive",
            "target_type": "dicomweb",
            "direction": "query",
            "url": f"file://{archive}",
        },
    )
    assert created.status_code == 201, created.text
    listed = tmp_path / "accessions.txt"
    listed.write_text("ACC1\nNOSUCH\n")

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(ui.url + "/login")
    page.fill("#username", FIRST_ADMIN)
    page.fill("#password", NEW_ADMIN_PASSWORD)
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    page.click("nav a[href='/query']")
    expect(page.locator("h1")).to_have_text("Query and retrieve")
    page.set_input_files("input[data-text-into]", str(listed))
    expect(page.locator("#f-accessions")).to_have_value("ACC1\nNOSUCH\n")
    page.click("main form button[type=submit]")
    expect(page.locator(".job-state")).to_have_text("running")

    with query_worker(ui, tmp_path / "worker"):
        # The progress shows before the job's completion is on the log: wait for both.
        wait_for(
            lambda: (
                "1 retrieved, 1 not found, 0 failed of 2" in reloaded(page)
                and page.locator(".job-state").inner_text().strip() == "completed"
            ),
            timeout_s=90,
            what="the job's progress and completion on the page",
        )
    page.click("details summary")
    expect(page.locator("table.accessions")).to_contain_text("not found")
    shot(page, "16-query")
    page.close()


def reloaded(page: Page) -> str:
    page.reload()
    return page.content()
