"""Every setting the service reads, in one place.

Settings come from environment variables (and an optional ``.env`` file in the working directory);
`.env.example` documents each one. Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Read scopes for every resource the service normalizes, requested up front because a missing
#: scope can only be fixed by the customer re-authorizing.
DEFAULT_SCOPES = (
    "user:profile:read",
    "user:billable_items:read",
    "user:bill_vendors:read",
    "user:bills:read",
    "user:clients:read",
    "user:credit_notes:read",
    "user:estimates:read",
    "user:expenses:read",
    "user:invoices:read",
    "user:payments:read",
    "user:projects:read",
    "user:taxes:read",
    "user:time_entries:read",
)


#: The database URLs the service runs on: its engine is async, through these drivers only.
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
_EXAMPLE_URLS = {
    "sqlite": "sqlite+aiosqlite:///path.db",
    "postgresql": "postgresql+asyncpg://user:password@host:5432/name",
}
DATABASE_URL_EXAMPLES = " or ".join(_EXAMPLE_URLS.values())


Role = Literal["all", "web", "worker"]
"""What ``serve`` runs: see :func:`webhook_service.app.create_app`."""


class ConfigurationError(ValueError):
    """A setting the service cannot run with; the message names the setting and what to do.

    Raised before any work starts (:func:`get_settings`), or when a setting meets the world (a
    database that cannot be reached: :mod:`webhook_service.storage.database`). The CLI prints the
    message on one line and exits 2.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- storage -------------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./data/webhook_service.db"
    auto_migrate: Literal["auto", "always", "never"] = "auto"
    secret_key: SecretStr | None = None
    dev_mode: bool = False
    dev_secret_key_file: str = "./data/dev-secret.key"

    # --- HTTP ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    http_header_timeout: float = Field(default=10.0, gt=0, le=300)
    http_body_timeout: float = Field(default=10.0, gt=0, le=300)
    http_max_connections: int = Field(default=1000, ge=1, le=100_000)
    public_base_url: str = "http://127.0.0.1:8000"
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # --- run modes ------------------------------------------------------------------------------
    serve_role: Role = "all"
    serve_workers: int = Field(default=0, ge=0, le=64)
    serve_web_processes: int = Field(default=1, ge=1, le=64)
    duty_lease_seconds: float = Field(default=30.0, ge=2, le=3600)
    duty_concurrency: int = Field(default=200, ge=1, le=10_000)
    freshbooks_background_rate: float = Field(default=1.0, ge=0)
    prometheus_multiproc_dir: str = ""

    # --- FreshBooks ----------------------------------------------------------------------------
    freshbooks_client_id: str = ""
    freshbooks_client_secret: SecretStr = SecretStr("")
    freshbooks_redirect_uri: str = ""
    freshbooks_api_base: str = "https://api.freshbooks.com"
    freshbooks_auth_base: str = "https://auth.freshbooks.com"
    freshbooks_scopes: str = ""
    freshbooks_timeout: float = Field(default=30.0, gt=0)
    freshbooks_proxy: str = ""
    """An HTTP(S) proxy for every request to FreshBooks (API and token endpoint); none when empty."""
    freshbooks_max_attempts: int = Field(default=5, ge=1, le=20)
    freshbooks_max_retry_wait: float = Field(default=120.0, gt=0)
    freshbooks_concurrency_per_tenant: int = Field(default=4, ge=1, le=64)

    # --- inbound webhooks ----------------------------------------------------------------------
    freshbooks_events: str = ""
    inbound_max_body_bytes: int = Field(default=65536, ge=1024, le=10 * 1024 * 1024)
    inbox_dedupe_window: int = Field(default=300, ge=0)
    callback_verifier_grace: int = Field(default=3600, ge=0)
    callback_sync_interval: float = Field(default=3600.0, gt=0)
    callback_verify_attempts: int = Field(default=3, ge=1, le=10)
    inbound_commit_timeout: float = Field(default=5.0, gt=0, le=60)
    inbound_queue_limit: int = Field(default=5000, ge=1, le=1_000_000)

    # --- processing and delivery ---------------------------------------------------------------
    admin_token: SecretStr | None = None
    console_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    """How long a console sign-in lasts, from the moment of signing in."""
    console_secure_cookie: bool | None = None
    """The console's session cookie only over HTTPS; unset: when ``PUBLIC_BASE_URL`` is https."""
    processor_concurrency: int = Field(default=8, ge=1, le=256)
    processor_lease_seconds: int = Field(default=120, ge=5)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, le=300)
    delivery_workers: int = Field(default=1, ge=0, le=64)
    delivery_batch_size: int = Field(default=200, ge=1, le=1000)
    delivery_concurrency: int = Field(default=64, ge=1, le=1024)
    delivery_timeout: float = Field(default=15.0, gt=0, le=120)
    delivery_retry_schedule: str = "0,5,300,1800,7200,18000,36000,36000"
    delivery_retry_jitter: float = Field(default=0.2, ge=0, le=0.9)
    delivery_lease_seconds: int = Field(default=60, ge=5)
    delivery_poll_interval: float = Field(default=1.0, gt=0)
    subscription_disable_after_hours: float = Field(default=120.0, gt=0)
    secret_rotation_grace_hours: float = Field(default=24.0, ge=0, le=24 * 7)
    outbound_allowed_cidrs: str = ""
    outbound_https_only: bool = False

    # --- polling backfill --------------------------------------------------------------------
    backfill_interval: float = Field(default=900.0, gt=0)
    backfill_enabled: bool = True
    backfill_initial_lookback_hours: float = Field(default=24.0, ge=0)
    backfill_watermark_margin: float = Field(default=120.0, ge=0)

    # --- retention -----------------------------------------------------------------------------
    retention_days: float = Field(default=30.0, gt=0)
    retention_response_body_days: float = Field(default=7.0, gt=0)
    retention_interval: float = Field(default=3600.0, gt=0)
    retention_batch_size: int = Field(default=500, ge=1, le=10_000)

    # --- tokens and OAuth ----------------------------------------------------------------------
    token_refresh_margin_min: int = Field(default=60, ge=0)
    token_refresh_margin_max: int = Field(default=180, ge=0)
    token_refresh_lease_seconds: int = Field(default=45, ge=5)
    token_check_interval: float = Field(default=30.0, gt=0)
    oauth_state_ttl: int = Field(default=600, ge=30)

    @field_validator("database_url")
    @classmethod
    def _async_database(cls, value: str) -> str:
        problem = database_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value.strip()

    @field_validator("console_secure_cookie", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def console_cookie_is_secure(self) -> bool:
        if self.console_secure_cookie is not None:
            return self.console_secure_cookie
        return self.public_base_url.startswith("https://")

    @field_validator("outbound_allowed_cidrs")
    @classmethod
    def _networks(cls, value: str) -> str:
        for cidr in value.replace(",", " ").split():
            try:
                ipaddress.ip_network(cidr)  # as the egress policy reads them (core/egress_policy.py)
            except ValueError as exc:
                raise ValueError(
                    f"{cidr!r} is not a network ({exc}); list CIDRs such as 10.0.0.0/8, separated by spaces or commas"
                ) from None
        return value

    @field_validator("public_base_url", "freshbooks_api_base", "freshbooks_auth_base")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @cached_property
    def redirect_uri(self) -> str:
        return self.freshbooks_redirect_uri or f"{self.public_base_url}/oauth/freshbooks/callback"

    @cached_property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.freshbooks_scopes.replace(",", " ").split()) or DEFAULT_SCOPES

    @cached_property
    def retry_schedule(self) -> tuple[float, ...]:
        """Delay before each attempt, in seconds (the first is usually 0)."""
        try:
            delays = tuple(float(part) for part in self.delivery_retry_schedule.replace(" ", "").split(",") if part)
        except ValueError as exc:
            raise ValueError("DELIVERY_RETRY_SCHEDULE must be comma-separated seconds") from exc
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("DELIVERY_RETRY_SCHEDULE needs at least one non-negative delay")
        return delays

    @cached_property
    def allowed_cidrs(self) -> tuple[str, ...]:
        return tuple(self.outbound_allowed_cidrs.replace(",", " ").split())

    def reconnect_url(self, business_id: int) -> str:
        """Where to send a customer to connect (or reconnect) this business: the OAuth flow's start."""
        return f"{self.public_base_url}/oauth/freshbooks/start?business_id={business_id}"

    @property
    def webhook_base_url(self) -> str:
        """Callback URIs are this plus an endpoint key; anything under it is the service's own."""
        return f"{self.public_base_url}/webhooks/freshbooks/"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_migrate_on_start(self) -> bool:
        if self.auto_migrate == "auto":
            return self.is_sqlite
        return self.auto_migrate == "always"


def get_settings(**overrides: object) -> Settings:
    """Load settings from the environment; keyword overrides win (tests and the CLI use them).

    An invalid setting raises :class:`ConfigurationError` naming its variable (never its value when
    the value is a secret).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = [_explain(detail) for detail in error.errors()]
        names = sorted({name for name, _ in problems})
        raise ConfigurationError("; ".join(text for _, text in problems), setting=", ".join(names)) from None


_SECRET_VALUES = frozenset({"database_url", "secret_key", "freshbooks_client_secret", "admin_token"})


def _explain(error: ErrorDetails) -> tuple[str, str]:
    """One pydantic error as ``(VARIABLE, "VARIABLE: what is wrong; what to do")``."""
    field = str(error["loc"][0]) if error["loc"] else "settings"
    name = field.upper()
    message = error["msg"]
    if error["type"] == "value_error":  # our own validators say it all
        return name, f"{name}: {message.removeprefix('Value error, ')}"
    shown = "" if field in _SECRET_VALUES else f" {error['input']!r}"
    expected = message[:1].lower() + message[1:]
    return name, f"{name}:{shown} is not valid ({expected}); fix {name} in the environment or .env"


def database_url_problem(url: str) -> str | None:
    """What is wrong with a ``DATABASE_URL`` and how to fix it, or None when the service can use it.

    Only the scheme is checked here (the rest is the driver's to judge, when it connects); the
    password never appears in the answer.
    """
    shown = mask_password(url.strip())
    scheme = re.match(r"^([A-Za-z][\w+.-]*)://", url.strip())
    either = DATABASE_URL_EXAMPLES
    if scheme is None:
        return f"{shown!r} is not a database URL; use {either}"
    if scheme.group(1).lower() in DATABASE_SCHEMES:
        return None
    backend, _, driver = scheme.group(1).lower().partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    good = next((s for s in DATABASE_SCHEMES if s.startswith(f"{backend}+")), None)
    if good is None:
        return f"{shown!r}: {backend} is not supported; use {either}"
    other = next(example for name, example in _EXAMPLE_URLS.items() if name != backend)
    fixed = f"{good}://{shown.split('://', 1)[1]}"
    what = "has no async driver" if not driver else f"uses the driver {driver!r}"
    return f"{shown!r} {what}; use {fixed} (or {other})"


def mask_password(url: str) -> str:
    """``url`` with the password between ``user:`` and ``@`` replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority_end = rest.split("?", 1)[0].rfind("@")
    if authority_end < 0:
        return url
    user, colon, _ = rest[:authority_end].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***{rest[authority_end:]}"
