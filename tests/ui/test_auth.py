"""Logging in: first-run admin, forced password change, sessions, CSRF, throttling, audit."""

import httpx
import pytest

from infra.catalogue import LoginFailed, UserLoggedIn, UserSaved
from infra.topics import Topic
from tests.support import reading
from tests.ui.conftest import ADMIN_PASSWORD, NEW_ADMIN_PASSWORD, Ui
from ui.security import CSRF_HEADER, SESSION_COOKIE
from ui.services import FIRST_ADMIN

pytestmark = pytest.mark.integration


def test_first_admin_must_change_the_password_before_anything_else(
    ui: Ui, request: pytest.FixtureRequest
) -> None:
    client = ui.log_in(FIRST_ADMIN, ADMIN_PASSWORD)
    request.addfinalizer(client.close)
    assert client.get("/api/rules").status_code == 403
    assert client.get("/rules").headers["location"] == "/password"

    weak = client.post(
        "/api/password", json={"current_password": ADMIN_PASSWORD, "new_password": "short"}
    )
    assert weak.status_code == 422
    changed = client.post(
        "/api/password",
        json={"current_password": ADMIN_PASSWORD, "new_password": NEW_ADMIN_PASSWORD},
    )
    assert changed.status_code == 200
    assert client.get("/api/rules").json() == []

    with reading(ui.settings, [Topic.CONFIG]) as log:
        log.wait(lambda r: len(r.of(UserSaved)) == 2, timeout_s=10, what="two UserSaved")
    first, change = log.of(UserSaved)
    assert first.after is not None
    assert change.after is not None
    assert first.after["must_change_password"] is True
    assert change.after["must_change_password"] is False
    sealed = change.after["credential"]
    assert not sealed.startswith("$argon2"), "the plain hash never goes to the log"


def test_the_old_password_no_longer_works_and_old_sessions_end(ui: Ui, admin: httpx.Client) -> None:
    with ui.client() as fresh:
        token = fresh.get("/api/session").json()["csrf_token"]
        old = fresh.post(
            "/api/login",
            json={"username": FIRST_ADMIN, "password": ADMIN_PASSWORD},
            headers={CSRF_HEADER: token},
        )
    assert old.status_code == 401
    assert admin.get("/api/rules").status_code == 200


def test_session_cookie_is_signed_httponly_and_strict(ui: Ui) -> None:
    with ui.client() as client:
        response = client.get("/api/session")
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Max-Age=" in cookie
        client.cookies.set(SESSION_COOKIE, "forged." + client.cookies[SESSION_COOKIE][7:])
        assert client.get("/api/rules").status_code == 401
        assert client.get("/rules").headers["location"] == "/login"


def test_writes_without_the_csrf_token_are_refused(ui: Ui, admin: httpx.Client) -> None:
    token = admin.headers.pop(CSRF_HEADER)
    refused = admin.post("/api/queue/suspend", json={"queue": "dispatch"})
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    wrong = admin.post(
        "/api/queue/suspend", json={"queue": "dispatch"}, headers={CSRF_HEADER: "x" + token}
    )
    assert wrong.status_code == 403
    with ui.client() as anonymous:
        login = anonymous.post("/api/login", json={"username": "admin", "password": "x"})
        assert login.status_code == 403, "even logging in needs the token"


def test_failed_logins_are_audited_and_throttled(ui: Ui) -> None:
    with ui.client() as client:
        token = client.get("/api/session").json()["csrf_token"]
        statuses = [
            client.post(
                "/api/login",
                json={"username": FIRST_ADMIN, "password": f"guess {n}"},
                headers={CSRF_HEADER: token},
            ).status_code
            for n in range(ui.settings.login_max_failures + 1)
        ]
        right = client.post(
            "/api/login",
            json={"username": FIRST_ADMIN, "password": ADMIN_PASSWORD},
            headers={CSRF_HEADER: token},
        )
    assert statuses == [401] * ui.settings.login_max_failures + [429]
    assert right.status_code == 429, "throttled even with the right password"
    with reading(ui.settings, [Topic.OPERATIONS]) as log:
        log.wait(lambda r: len(r.of(LoginFailed)) == 5, timeout_s=10, what="LoginFailed events")
    assert {event.username for event in log.of(LoginFailed)} == {FIRST_ADMIN}
    assert log.of(UserLoggedIn) == []


def test_a_login_is_an_event_with_the_user_as_actor(ui: Ui, admin: httpx.Client) -> None:
    with reading(ui.settings, [Topic.OPERATIONS]) as log:
        log.wait(lambda r: bool(r.of(UserLoggedIn)), timeout_s=10, what="UserLoggedIn")
    envelope = next(e for e, _ in log.seen if isinstance(e.payload, UserLoggedIn))
    assert envelope.actor == FIRST_ADMIN
    assert log.of(UserLoggedIn)[0].address == "127.0.0.1"


def test_logout_ends_the_session(admin: httpx.Client) -> None:
    assert admin.post("/api/logout").status_code == 204
    assert admin.get("/api/rules").status_code == 401
