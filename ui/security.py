"""Sessions, CSRF tokens and login throttling.

A session is one signed cookie (itsdangerous, HMAC with the secret key, timestamped): HttpOnly,
SameSite=Strict, Secure when configured, expiring after `session_max_age_s`. It holds a random
CSRF token, and once logged in the user's name and a fingerprint of their credential, so a
password change or a deleted user ends every older session. Every state-changing request must
send the session's CSRF token back (header `X-CSRF-Token`, or the `csrf_token` field of a plain
form) — a cross-site page can neither read the cookie nor the token.
"""

import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "talaria_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, kw_only=True)
class Session:
    csrf: str
    user: str | None = None
    fingerprint: str | None = None

    @classmethod
    def anonymous(cls) -> "Session":
        return cls(csrf=secrets.token_urlsafe(32))

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionCodec:
    """Signs sessions into cookie values and reads them back (None when forged or expired)."""

    def __init__(self, secret: str, *, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="talaria session")
        self.max_age_s = max_age_s

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps(
            {"csrf": session.csrf, "user": session.user, "fp": session.fingerprint}
        )

    def loads(self, value: str | None) -> Session | None:
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.max_age_s)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        return Session(csrf=data["csrf"], user=data.get("user"), fingerprint=data.get("fp"))


class LoginThrottle:
    """Refuses logins for a user name or an address after too many recent failures."""

    def __init__(self, *, max_failures: int, window_s: float) -> None:
        self._max = max_failures
        self._window_s = window_s
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        return failures

    def blocked(self, *, username: str, address: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(
                len(self._recent(key, now)) >= self._max
                for key in (f"user:{username}", f"addr:{address}")
            )

    def failed(self, *, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"user:{username}", f"addr:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, *, username: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{username}", None)
