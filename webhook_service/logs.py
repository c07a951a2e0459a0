"""Structured logging: JSON lines for machines, readable lines on a terminal, never a secret.

Everything (our code, uvicorn, alembic, httpx) goes through one structlog pipeline so the same
redaction applies to all of it. Redaction works on keys: any event field whose name says it holds a
credential is masked, however deeply nested. Code must still never put a secret in the event text.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

_SECRET_KEY_PATTERN = re.compile(
    r"(token|secret|verifier|password|authorization|cookie|api[_-]?key|code|signature)", re.IGNORECASE
)
#: Field names that match the pattern above but are safe and useful to keep.
_SAFE_KEYS = frozenset({"status_code", "error_code", "token_version", "exit_code", "errno"})
REDACTED = "[redacted]"


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: (REDACTED if _is_secret_key(key) else _redact(item)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item) for item in value)
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _SAFE_KEYS and bool(_SECRET_KEY_PATTERN.search(key))


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor masking credential-bearing fields."""
    return _redact(event_dict)  # type: ignore[no-any-return]


def configure_logging(level: str = "info", fmt: str = "auto", *, log_file: str | None = None) -> None:
    """Set up structlog and route the standard library's loggers through it.

    ``log_file``: append JSON lines to this file instead of writing to stderr (the demo keeps the
    service's log out of its narration this way).
    """
    use_json = fmt == "json" or log_file is not None or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,  # type: ignore[list-item]
            renderer,
        ],
    )
    handler: logging.Handler = _StderrHandler() if log_file is None else logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for previous in root.handlers:
        previous.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; uvicorn's access log would print OAuth codes in query
    # strings. The request middleware logs requests itself, without query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrate.upgrade logs what it applied
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, so redirection (and test capture) just works."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _identity(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
