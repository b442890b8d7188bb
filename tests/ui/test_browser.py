"""The main path in a real browser (Debian's chromium driven by Playwright): first login and
password change, a DICOM target and a rule made with the forms, a study in the archive whose
attacker-controlled PatientName renders as text. Screenshots of each page go to
`tests/ui/artifacts/` (look at them: a page that works but looks broken is not done)."""

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from infra.catalogue import InstanceReceived
from tests.executors.query.conftest import write_studies
from tests.projections.story import blob, event
from tests.support import publish, wait_for
from tests.ui.conftest import ADMIN_PASSWORD, NEW_ADMIN_PASSWORD, Ui, query_worker
from ui.services import FIRST_ADMIN

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
XSS_NAME = "<script>window.xss=1</script>^<img src=x onerror=window.xss=2>"
STUDY, SERIES = "1.2.826.0.9.1", "1.2.826.0.9.1.1"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
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


def test_first_login_target_rule_and_an_xss_patient_name(ui: Ui, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.goto(ui.url + "/")
    expect(page).to_have_url(ui.url + "/login")
    shot(page, "01-login")
    page.fill("#username", FIRST_ADMIN)
    page.fill("#password", "wrong password")
    page.click("main button[type=submit]")
    expect(page.locator(".form-error")).to_have_text("wrong user name or password")
    page.fill("#username", FIRST_ADMIN)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("main button[type=submit]")

    expect(page).to_have_url(ui.url + "/password")
    shot(page, "02-change-password")
    page.fill("#f-current_password", ADMIN_PASSWORD)
    page.fill("#f-new_password", "browser-chosen-password")
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    shot(page, "03-overview")

    page.goto(ui.url + "/targets/new?type=dicom")
    page.fill("#f-name", "pacs")
    page.fill("#f-ip", "127.0.0.1")
    page.fill("#f-port", "11999")
    page.fill("#f-aet_target", "PACS")
    shot(page, "04-target-editor")
    page.click("form[data-api] button[type=submit]")
    expect(page).to_have_url(ui.url + "/targets")
    expect(page.locator("table")).to_contain_text("pacs")
    shot(page, "05-targets")

    page.goto(ui.url + "/rules/new")
    page.fill("#f-name", "ct-to-pacs")
    page.fill("#f-rule", "@Modality@ == 'CT'")
    page.fill("#f-target", "pacs")
    page.fill("#t-tags", "Modality = CT")
    page.click("form[data-rule-tester] button[type=submit]")
    expect(page.locator("#test-result")).to_have_text("Match")
    shot(page, "06-rule-editor-and-tester")
    page.click("form[data-method=POST][data-next] button[type=submit]")
    expect(page).to_have_url(ui.url + "/rules")
    expect(page.locator("table")).to_contain_text("ct-to-pacs")
    expect(page.locator("table")).to_contain_text("enabled")
    shot(page, "07-rules")

    publish(
        ui.settings,
        [
            event(
                InstanceReceived(
                    study_uid=STUDY,
                    series_uid=SERIES,
                    sop_uid=f"{SERIES}.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    blob=blob("xss"),
                    tags={"PatientName": XSS_NAME, "Modality": "CT", "PatientID": "X1"},
                ),
                0,
            )
        ],
    )
    page.goto(ui.url + "/archive")
    for _ in range(60):
        if page.locator("table").count():
            break
        page.wait_for_timeout(500)
        page.reload()
    link = page.locator("table a").first
    expect(link).to_have_text(XSS_NAME)
    assert page.evaluate("window.xss") is None, "the tag value ran as script"
    shot(page, "08-archive")
    link.click()
    expect(page.locator("h1")).to_contain_text(XSS_NAME)
    assert page.evaluate("window.xss") is None
    shot(page, "09-series")

    for path, name in [("/queue", "10-queue"), ("/audit", "11-audit"), ("/users", "12-users")]:
        page.goto(ui.url + path)
        shot(page, name)
    expect(page.locator("table")).to_contain_text("admin")
    page.close()


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
        wait_for(
            lambda: "1 retrieved, 1 not found, 0 failed of 2" in reloaded(page),
            timeout_s=90,
            what="the job's progress on the page",
        )
    expect(page.locator(".job-state")).to_have_text("completed")
    page.click("details summary")
    expect(page.locator("table.accessions")).to_contain_text("not found")
    shot(page, "10-query")
    page.close()


def reloaded(page: Page) -> str:
    page.reload()
    return page.content()
