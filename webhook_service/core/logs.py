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

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from sqlalchemy.exc import StatementError

from webhook_service.core.jsontext import compact

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


_PLAIN = frozenset({str, int, float, bool, type(None)})
"""Values with nothing inside to redact: most of a line's fields, passed by type alone (asking each
whether it is a ``Mapping`` goes through the ABC's instance check, a third of a line's redaction)."""


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _names_a_secret(key)
            else (item if type(item) in _PLAIN else _redact(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item) for item in value)
    return value


@functools.lru_cache(maxsize=4096)
def _names_a_secret(key: str) -> bool:
    """Asked once per field name: a line's ten fields cost 10.6 µs through the pattern, every line."""
    return key not in _SAFE_KEYS and bool(_SECRET_KEY_PATTERN.search(key))


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
    """Set up structlog and route the standard library's loggers through the same processors.

    The service's own lines go from structlog's processors straight to the handler's stream: through
    the standard library (two ``LogRecord``s, a caller lookup, a formatter) an info line cost 45 µs
    of CPU, and a webhook logs two, an event three. Other libraries' lines still come through
    ``logging`` and get the same processors. Both write whole lines under the handler's lock.

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
        structlog.processors.JSONRenderer(serializer=_json_text)
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # Its default with rich installed shows every frame's locals (tokens, bodies, verifiers).
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    rendering: list[Any] = [
        hide_statement_parameters,
        structlog.processors.format_exc_info if use_json else _identity,
        renderer,
    ]
    handler: logging.Handler = _StderrHandler() if log_file is None else logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *rendering],
        # A line below LOG_LEVEL returns at once: the wrapper's method for it does nothing
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_HandlerLines(handler),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for previous in root.handlers:
        previous.close()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    for name, floor in THIRD_PARTY_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    # uvicorn's access log would print OAuth codes in query strings. The request middleware logs
    # requests itself, without query strings.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _json_text(value: Any, **options: Any) -> str:
    """A JSON line's text, written by orjson (the standard library's when orjson cannot)."""
    return compact(value, default=options.get("default")).decode("utf-8")


class _HandlerLines:
    """structlog's logger factory: each logger writes its rendered lines to ``handler``'s stream.

    Only while ``handler`` is the root logger's: a test that removes it silences the service's
    lines as it silences the other libraries'.
    """

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def __call__(self, name: str | None = None, *_: Any) -> _Lines:
        return _Lines(self._handler, name)


class _Lines:
    def __init__(self, handler: logging.Handler, name: str | None) -> None:
        self._handler = handler
        self.name = name  # structlog.stdlib.add_logger_name reads it

    def msg(self, message: str) -> None:
        handler = self._handler
        if handler not in logging.root.handlers:
            return
        stream = getattr(handler, "stream", None)
        if stream is None:
            return
        handler.acquire()
        try:
            stream.write(message + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (a line that cannot be written must not stop the service)
            pass
        finally:
            handler.release()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


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


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
