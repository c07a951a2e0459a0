"""Structured logging: JSON lines for machines, readable lines on a terminal, never a secret.

Everything (our code, uvicorn, alembic, httpx) goes through one structlog pipeline so the same
redaction applies to all of it. Redaction works on keys: any event field whose name says it holds a
credential is masked, however deeply nested. Code must still never put a secret in the event text.

Tracebacks show code, never values: no frame's local variables (structlog's console renderer would
show them through rich), and no SQL statement's parameters (they hold webhook bodies, signatures
and ciphertexts), whichever engine raised the error.

``LOG_LEVEL=debug`` adds the service's own debug lines (each FreshBooks request, inbox group
commits, backfill pages, claims); third-party libraries stay at their usual levels, see
:data:`THIRD_PARTY_FLOORS`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from sqlalchemy.exc import StatementError

_SECRET_KEY_PATTERN = re.compile(
    r"(token|secret|verifier|password|authorization|cookie|api[_-]?key|code|signature)", re.IGNORECASE
)
#: Field names that match the pattern above but are safe and useful to keep.
_SAFE_KEYS = frozenset({"status_code", "error_code", "token_version", "exit_code", "errno"})
REDACTED = "[redacted]"

#: The least severe level each third-party logger may log at, whatever ``LOG_LEVEL`` says: their
#: debug output is noise to an operator following the service's work, and some of it leaks (httpx
#: logs request URLs at info, SQLAlchemy echoes statements with their parameters at info,
#: aiosqlite logs every call, alembic what it applied).
THIRD_PARTY_FLOORS: Mapping[str, int] = {
    "aiohttp": logging.INFO,
    "aiosqlite": logging.WARNING,
    "alembic": logging.WARNING,
    "asyncio": logging.INFO,
    "httpcore": logging.WARNING,
    "httpx": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "uvicorn": logging.INFO,
    "uvicorn.error": logging.INFO,  # its own level, not inherited: uvicorn skips trace calls then
    "websockets": logging.INFO,
}


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


def hide_statement_parameters(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: an exception about to be rendered shows no SQL statement parameters.

    SQLAlchemy's errors print ``[parameters: ...]`` unless raised with ``hide_parameters``; the
    service's engine sets it, this makes it so for any error (another engine, a test's, a driver's
    wrapped in ours) before its text is rendered.
    """
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    pending = [exc_info[1] if isinstance(exc_info, tuple) else exc_info]
    seen: set[int] = set()
    while pending:  # everything a traceback renders: causes, contexts, groups' members
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, StatementError):
            error.hide_parameters = True
        pending += [error.__cause__, error.__context__]
        if isinstance(error, BaseExceptionGroup):
            pending += error.exceptions
    return event_dict


def cache_loggers() -> None:
    """From now on each module's logger is built once, at its first line, not again for every line
    (structlog's ``cache_logger_on_first_use``): for a long-running service process, whose logging
    is configured once and for good. Left off elsewhere, so tests and tools can reconfigure."""
    structlog.configure(cache_logger_on_first_use=True)


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
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Its default with rich installed shows every frame's locals (tokens, bodies, verifiers).
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    structlog.configure(
        processors=[
            # First: a line below LOG_LEVEL is dropped before any processor runs (a debug line on the
            # hot path costs a level check, not the whole chain).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            hide_statement_parameters,
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
    for name, floor in THIRD_PARTY_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    # uvicorn's access log would print OAuth codes in query strings. The request middleware logs
    # requests itself, without query strings.
    logging.getLogger("uvicorn.access").disabled = True
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


class _BoundLogger(structlog.stdlib.BoundLogger):
    """A debug or info line below ``LOG_LEVEL`` returns before structlog builds its event: a few
    such lines on every webhook and event cost 4.3 µs each through the processor chain (whose first
    step, ``filter_by_level``, drops them the same way), 1.4 µs here."""

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
