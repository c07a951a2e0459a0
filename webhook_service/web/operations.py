"""The admin API's table of operations: each entry is a route and an OpenAPI operation at once.

An operation is declared once, by decorating its handler with an :class:`Operations` table: method,
path, answer model and status. Everything else is read off the handler: its docstring is the
operation's summary (and description), its parameters after the runtime are the input it takes,
each validated before it runs:

- one ``str`` parameter per ``{id}`` of the path, named alike (:data:`~webhook_service.web.fields.PATH_IDS`
  describes each);
- ``query``: a model of the query parameters (:mod:`webhook_service.web.schemas`);
- ``body``: a model of the JSON body.

:meth:`Operations.routes` serves the table and :func:`webhook_service.web.openapi.build_document`
documents the very same table, so there is no route without its documentation, and no documented
parameter or field the route does not check. Every refusal is an
:func:`~webhook_service.web.errors.error_response`; no input leads to a 500.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_service.inbound.receiver import Refusal
from webhook_service.runtime import Runtime
from webhook_service.web.errors import error_response
from webhook_service.web.fields import MAX_BODY_BYTES, PATH_IDS, RecordId
from webhook_service.web.responses import JSONResponse
from webhook_service.web.webhooks import _read_capped

Handler = Callable[..., Awaitable[Any]]
HandlerT = TypeVar("HandlerT", bound=Handler)
MODELS = ("query", "body")
"""The handler parameters that receive a validated model, in the order the input is read."""
RECORD_ID: TypeAdapter[str] = TypeAdapter(RecordId)


class ApiError(Exception):
    """A refusal: the status, error slug and message for the client."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


@dataclass(frozen=True)
class Operation:
    """One entry of the table; see :meth:`Operations.__call__`."""

    method: str
    path: str
    handler: Handler
    response: type[BaseModel] | None
    status: int
    errors: frozenset[int]
    tag: str
    public: bool
    operation_id: str
    path_ids: tuple[str, ...]
    models: Mapping[str, type[BaseModel]]

    @property
    def body_optional(self) -> bool:
        """Whether the body may be left out (its model says so; then it is ``{}``)."""
        return getattr(self.models.get("body"), "optional", False)

    @property
    def summary(self) -> str:
        return " ".join((inspect.getdoc(self.handler) or "").split("\n\n", 1)[0].split())

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.handler) or "").partition("\n\n")[2]

    def error_statuses(self) -> list[int]:
        """What else it may answer: a guarded operation 401, 503 and 422 (an unknown query
        parameter); one with path ids 404, one with a body 400 and 413; and ``errors``."""
        if self.public:
            return sorted(self.errors)
        codes = {401, 422, 503, *self.errors}
        codes |= {404} if self.path_ids else set()
        codes |= {400, 413} if "body" in self.models else set()
        return sorted(codes)


class Operations:
    """The table, filled by decorating handlers, read by :meth:`routes` and the document builder.

    ``authorize`` answers a request to a guarded operation (a refusal, or None to go on);
    ``translate`` turns an exception a handler raised into an :class:`ApiError` (None: not ours).
    """

    def __init__(
        self,
        prefix: str,
        *,
        authorize: Callable[[Request], Response | None],
        translate: Callable[[Exception], ApiError | None],
    ) -> None:
        self.prefix = prefix
        self.table: list[Operation] = []
        self._authorize = authorize
        self._translate = translate

    def __call__(
        self,
        method: str,
        path: str,
        response: type[BaseModel] | None,
        *,
        tag: str,
        status: int = 200,
        errors: tuple[int, ...] = (),
        public: bool = False,
        operation_id: str | None = None,
    ) -> Callable[[HandlerT], HandlerT]:
        """Add the handler as ``method path`` (under the prefix), answering ``status`` with a
        ``response`` (the handler returns it as JSON-ready values; None: no body).

        ``errors``: statuses the handler itself may refuse with, beyond those of
        :meth:`Operation.error_statuses`; ``public``: no token needed, and no other check either. The
        operation id is the handler's name in camelCase unless ``operation_id`` says otherwise.
        """

        def register(handler: HandlerT) -> HandlerT:
            path_ids, models = _inputs(handler, path)
            self.table.append(
                Operation(
                    method=method,
                    path=self.prefix + path,
                    handler=handler,
                    response=response,
                    status=status,
                    errors=frozenset(errors),
                    tag=tag,
                    public=public,
                    operation_id=operation_id or _camel_case(handler.__name__),
                    path_ids=path_ids,
                    models=models,
                )
            )
            return handler

        return register

    def routes(self) -> list[Route]:
        """One route per path, so a wrong method gets a 405 whose ``Allow`` lists every method there."""
        by_path: dict[str, dict[str, Operation]] = {}
        for operation in self.table:
            by_path.setdefault(operation.path, {})[operation.method] = operation
        return [self._route(path, operations) for path, operations in by_path.items()]

    def _route(self, path: str, operations: dict[str, Operation]) -> Route:
        async def dispatch(request: Request) -> Response:
            return await self.answer(operations["GET" if request.method == "HEAD" else request.method], request)

        dispatch.__name__ = "_".join(operation.handler.__name__ for operation in operations.values())
        return Route(path, dispatch, methods=list(operations))

    async def answer(self, operation: Operation, request: Request) -> Response:
        """Authenticate, validate the input, run the handler, and answer with its result or a refusal."""
        if not operation.public and (refused := self._authorize(request)) is not None:
            return refused
        try:
            if not operation.public:
                _refuse_unknown_query(request, operation.models.get("query"))
            inputs: dict[str, Any] = {name: _path_id(request, name) for name in operation.path_ids}
            for name, model in operation.models.items():
                inputs[name] = await _READERS[name](request, model, operation)
            runtime: Runtime = request.app.state.runtime
            result = await operation.handler(runtime, **inputs)
        except Exception as exc:
            refusal = exc if isinstance(exc, ApiError) else self._translate(exc)
            if refusal is None:
                raise
            return error_response(request, refusal.status, refusal.error, refusal.message)
        if operation.response is None:
            return Response(status_code=operation.status)
        return JSONResponse(result, status_code=operation.status)


def _inputs(handler: Handler, path: str) -> tuple[tuple[str, ...], dict[str, type[BaseModel]]]:
    """The path ids and the models the handler takes; anything else about it is a mistake."""
    hints = get_type_hints(handler)
    _runtime, *names = inspect.signature(handler).parameters
    path_ids = tuple(_PATH_ID.findall(path))
    models = {name: hints[name] for name in MODELS if name in names}
    problems = [f"no parameter for the path id {name!r}" for name in path_ids if name not in names]
    problems += [f"no description of {name!r} in PATH_IDS" for name in path_ids if name not in PATH_IDS]
    problems += [
        f"{name!r} is neither a path id nor one of {MODELS}" for name in names if name not in path_ids + MODELS
    ]
    problems += [f"{name!r} is not a pydantic model" for name, model in models.items() if not _is_model(model)]
    problems += [] if inspect.getdoc(handler) else ["no docstring (the operation's summary)"]
    if problems:
        raise TypeError(f"{handler.__name__}: {'; '.join(problems)}")
    return path_ids, models


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_PATH_ID = re.compile(r"\{(\w+)\}")


def _camel_case(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


# --- reading and validating the input ----------------------------------------------------------


def _refuse_unknown_query(request: Request, model: type[BaseModel] | None) -> None:
    """A query parameter the operation does not take is refused rather than ignored, so a misspelt
    filter (``?staus=dead``) cannot silently list every row."""
    taken = {field.alias or name for name, field in model.model_fields.items()} if model else set()
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise ApiError(422, "unknown_query_parameter", f"Unknown query parameters: {names}.")


def _path_id(request: Request, name: str) -> str:
    """A path id; one that cannot be valid (holding NUL, say) names no record: 404."""
    value: str = request.path_params[name]
    try:
        return RECORD_ID.validate_python(value)
    except ValidationError:
        raise ApiError(404, "not_found", f"No record with id {value!r}.") from None


async def _read_query(request: Request, model: type[BaseModel], operation: Operation) -> BaseModel:
    return _validated(model, dict(request.query_params))


async def _read_body(request: Request, model: type[BaseModel], operation: Operation) -> BaseModel:
    return _validated(model, await read_json_object(request, optional=operation.body_optional))


_READERS = {"query": _read_query, "body": _read_body}


def _validated(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """``values`` as ``model``, or a 422 naming each field at fault (the slug names the first)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = exc.errors(include_url=False)
        first = problems[0]
        field = str(first["loc"][0]) if first["loc"] else "body"
        error = "unknown_field" if first["type"] == "extra_forbidden" else f"invalid_{field}"
        message = "; ".join(_problem(problem) for problem in problems[:5])
        raise ApiError(422, error, message + ("; ..." if len(problems) > 5 else "")) from None


def _problem(problem: Any) -> str:
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    return f"{where}: {'no such field' if problem['type'] == 'extra_forbidden' else problem['msg']}"


async def read_json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read with a cap (413); ``optional``: an empty body is ``{}``."""
    try:
        body = await _read_capped(request, MAX_BODY_BYTES)
    except Refusal as refusal:
        raise ApiError(refusal.status, refusal.reason, refusal.message) from refusal
    if optional and not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge numbers, deep nesting
        raise ApiError(400, "bad_json", "The body is not valid JSON.") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    if not _storable(value):
        raise ApiError(422, "invalid_text", "Strings must not contain NUL characters or unpaired surrogates.")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: object) -> bool:
    """No string in ``value`` (keys included) holds NUL or an unpaired surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True
