"""When a failed job may run again: exponential backoff with a cap, shared by every executor."""

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with a cap, up to a number of attempts."""

    max_attempts: int = 5
    first_delay_s: float = 60.0
    max_delay_s: float = 900.0

    def next_attempt(self, attempt: int, *, now: datetime) -> datetime | None:
        """When attempt `attempt + 1` may run, or None when `attempt` was the last."""
        if attempt >= self.max_attempts:
            return None
        delay = min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s)
        return now + timedelta(seconds=delay)
