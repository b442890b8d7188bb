"""Settings of the web UI and API (``TALARIA_*`` environment variables).

The secret key signs session cookies and seals password hashes on the log; outside development
mode the app refuses to start without one, or with a well-known placeholder.
"""

from pydantic import Field, SecretStr, model_validator

from ingest.settings import IngestSettings
from projections.settings import ProjectionSettings

DEVELOPMENT_SECRET = "talaria-development-secret"  # noqa: S105 - refused outside development
_PLACEHOLDERS = frozenset({"", DEVELOPMENT_SECRET, "changethis", "secret", "changeme"})
MIN_SECRET_CHARS = 32


class UiSettings(ProjectionSettings, IngestSettings):
    """Where the UI listens, how it signs sessions, and how it reaches log and projections."""

    ui_bind: str = Field(default="127.0.0.1", description="Address the web UI listens on.")
    ui_port: int = Field(default=8000, ge=1, le=65535)
    secret_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET),
        description="Signs session cookies and seals password hashes; at least 32 characters.",
    )
    session_max_age_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    secure_cookies: bool = Field(
        default=False, description="Mark cookies Secure (serve the UI over HTTPS)."
    )
    login_max_failures: int = Field(default=5, ge=1, description="Failures before throttling.")
    login_window_s: float = Field(default=900.0, gt=0, description="Throttling window.")
    initial_admin_password: SecretStr | None = Field(
        default=None, description="Password of the first-run admin; random when unset."
    )
    embedded_projector: bool = Field(
        default=True,
        description="Run the projector inside the UI process (required for embedded chDB).",
    )

    @model_validator(mode="after")
    def _real_secret_outside_development(self) -> "UiSettings":
        secret = self.secret_key.get_secret_value()
        if self.mode != "development" and (
            secret in _PLACEHOLDERS or len(secret) < MIN_SECRET_CHARS
        ):
            raise ValueError(
                f"TALARIA_SECRET_KEY must be set to a random value of at least {MIN_SECRET_CHARS}"
                " characters outside development mode"
            )
        return self
