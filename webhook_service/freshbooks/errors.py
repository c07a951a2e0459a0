"""One exception for every way FreshBooks says no.

FreshBooks has at least four error shapes: accounting's ``response.errors[]`` (``errno``,
``message``, ``field``), the newer top-level ``errno``/``message``/``details``, the older
``code``/``message``/``details[].fieldViolations`` and OAuth's ``error``/``error_description``.
Callers should not care which one they got.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webhook_service.freshbooks.transport import Reply


class FreshBooksError(Exception):
    """A FreshBooks request that did not succeed.

    ``status`` is the HTTP status (0 when no response arrived), ``code`` FreshBooks' own code
    (``errno``, ``code`` or the OAuth ``error`` string), ``details`` whatever detail it sent.
    """

    def __init__(self, status: int, message: str, *, code: str | int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code is not None else ""
        return f"FreshBooks {self.status}{code}: {self.message}"

    @property
    def is_invalid_grant(self) -> bool:
        return self.code == "invalid_grant"

    @property
    def is_retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES or self.status == 0

    @classmethod
    def from_response(cls, response: Reply) -> FreshBooksError:
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip()[:200]
            return cls(response.status_code, text or response.reason_phrase or "error")
        return cls.from_body(response.status_code, body)

    @classmethod
    def from_body(cls, status: int, body: Any) -> FreshBooksError:
        if not isinstance(body, dict):
            return cls(status, str(body)[:200])
        if "error" in body and isinstance(body["error"], str):
            return cls(status, str(body.get("error_description") or body["error"]), code=body["error"])
        inner: dict[str, Any] = body["response"] if isinstance(body.get("response"), dict) else body
        errors = inner.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return cls(status, str(first.get("message", "error")), code=first.get("errno"), details=errors)
        if isinstance(errors, dict):
            inner = errors
        details = inner.get("details")
        if isinstance(details, list):
            violations = [
                violation for item in details if isinstance(item, dict) for violation in item.get("fieldViolations", [])
            ]
            details = violations or details
        code = inner.get("errno", inner.get("code"))
        message = inner.get("message") or inner.get("error") or "error"
        return cls(status, str(message), code=code, details=details)


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
