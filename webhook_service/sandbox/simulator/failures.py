"""Switchable bursts of failures (429s and friends).

FreshBooks' rate limits are unpublished: bursts get 429, sometimes with
``Retry-After``. Tests switch a burst on with ``SimulatorState.fail_next`` and
the traffic middleware consumes it one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

# Paths a burst leaves alone unless its ``paths_prefix`` names them: the OAuth
# endpoints (a service's token refresh should not be what a test of API
# back-off trips over) and the simulator's own control routes.
OAUTH_PREFIXES = ("/oauth/", "/auth/oauth/")
CONTROL_PREFIX = "/_sim/"


@dataclass(slots=True)
class FailureRule:
    """``remaining`` more requests under ``paths_prefix`` get ``status``."""

    remaining: int
    status: int
    retry_after: str | None
    paths_prefix: str | None

    def matches(self, path: str) -> bool:
        if self.paths_prefix is not None:
            return path.startswith(self.paths_prefix)
        return not path.startswith(OAUTH_PREFIXES)

    def body(self) -> dict[str, object]:
        if self.status == 429:
            return {"message": "Too Many Requests", "errno": 429}
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        return {"message": phrase, "errno": self.status}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": self.retry_after}


class FailurePlan:
    """Pending rules, consumed first-come first-served (not thread-safe alone)."""

    def __init__(self) -> None:
        self._rules: list[FailureRule] = []

    def add(self, count: int, status: int, retry_after: str | None, paths_prefix: str | None) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (4xx/5xx)")
        if count:
            self._rules.append(FailureRule(count, status, retry_after, paths_prefix))

    def take(self, path: str) -> FailureRule | None:
        """The rule that fails this request, if any; uses up one of its count."""
        if path.startswith(CONTROL_PREFIX):
            return None
        for rule in self._rules:
            if rule.matches(path):
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None

    def clear(self) -> None:
        self._rules.clear()
