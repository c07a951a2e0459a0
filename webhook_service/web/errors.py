"""How errors look to clients: short JSON, the request id, never a stack trace."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from webhook_service.core.logs import get_logger
from webhook_service.web.responses import JSONResponse

log = get_logger("webhook_service.http")


class Error(BaseModel):
    """Every refusal and failure: what went wrong, in a stable slug and in words."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="A stable slug: unauthorized, not_found, bad_json, invalid_<field>, ...")
    message: str = Field(description="What is wrong, for a person; it names the field or parameter at fault.")
    request_id: str | None = Field(description="The X-Request-ID of the request, to find it in the logs.")


def error_response(request: Request, status: int, error: str, message: str) -> JSONResponse:
    request_id = request.scope.get("state", {}).get("request_id")
    body = Error(error=error, message=message, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=status)


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(request, exc.status_code, _slug(exc.status_code), str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. Allow on a 405
    return response


async def unhandled_exception(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return error_response(request, 500, "internal_error", "The service failed to handle this request.")


def _slug(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "unprocessable_entity",
        429: "too_many_requests",
    }.get(status, "error")
