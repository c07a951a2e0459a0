"""Error responses in the shapes FreshBooks uses, raised as one exception type.

Route code raises ``ApiError``; the app's exception handler renders it. The
bodies differ per API family on purpose: a service must cope with each.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from .catalog import ResourceSpec
from .tokens import OAuthError


class ApiError(Exception):
    """An HTTP error with a ready JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def from_oauth(error: OAuthError) -> ApiError:
    """OAuth-style body; a 401 also carries a Bearer challenge."""
    headers = {}
    if error.status == 401 and error.error == "unauthenticated":
        headers["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{error.description}"'
    return ApiError(error.status, error.body(), headers)


def accounting_not_found(spec: ResourceSpec, value: str) -> ApiError:
    noun = spec.name.replace("_", " ")
    return ApiError(
        404,
        {
            "response": {
                "errors": [
                    {
                        "errno": 1012,
                        "field": spec.error_field,
                        "message": f"The requested {noun} could not be found.",
                        "object": spec.name,
                        "value": value,
                    }
                ]
            }
        },
    )


def account_not_found(identifier: str) -> ApiError:
    """A wrong or inaccessible account_id: a bare, unhelpful 404 like FreshBooks'."""
    return ApiError(
        404,
        {
            "response": {
                "errors": [
                    {
                        "errno": 1003,
                        "field": "accountid",
                        "message": "The requested account could not be found.",
                        "object": "account",
                        "value": identifier,
                    }
                ]
            }
        },
    )


def accounting_bad_request(field: str, message: str, value: str) -> ApiError:
    return ApiError(
        400,
        {
            "response": {
                "errors": [
                    {
                        "errno": 2001,
                        "field": field,
                        "message": message,
                        "object": "search",
                        "value": value,
                    }
                ]
            }
        },
    )


def projects_not_found(what: str = "Requested resource") -> ApiError:
    return ApiError(404, {"errno": 1012, "message": f"{what} not found"})


def projects_bad_request(message: str) -> ApiError:
    return ApiError(400, {"errno": 2001, "message": message})


def events_error(status: int, field: str, message: str) -> ApiError:
    """Events (callbacks) API style: ``{"errno", "message", "details": ["field: Value error, ..."]}``."""
    return ApiError(status, {"errno": status, "message": message, "details": [f"{field}: Value error, {message}"]})


def callback_not_found(value: str) -> ApiError:
    return ApiError(404, {"errno": 404, "message": "Callback not found.", "details": [f"callbackid: {value}"]})


def route_not_found() -> ApiError:
    return ApiError(404, {"error": "not found", "message": "The requested URL was not found on the server."})
