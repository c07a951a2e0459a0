"""The OpenAPI 3.1 document of an :class:`~webhook_service.web.operations.Operations` table.

Nothing in it is written for it: each entry of the table becomes an operation whose summary is its
handler's docstring; its path parameters are its path ids (:data:`~webhook_service.web.fields.PATH_IDS`),
its query parameters the fields of its query model; its request body and answers are references to
the JSON Schemas pydantic generates from the very models the route validates and answers with
(:mod:`webhook_service.web.schemas`), each answer described by its model's docstring; and every
refusal is an :class:`~webhook_service.web.errors.Error`.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from inspect import getdoc
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import CoreSchema, core_schema

from webhook_service.web.errors import Error
from webhook_service.web.fields import MAX_BODY_BYTES, PATH_IDS
from webhook_service.web.operations import RECORD_ID, Operation

JSON = "application/json"
REF = "#/components/schemas/{model}"
ERRORS: dict[int, str] = {
    400: "The body is not a JSON object (or not JSON at all), or it was cut off.",
    401: "No or wrong `Authorization: Bearer <ADMIN_TOKEN>`.",
    404: "No such record.",
    409: "The subscription is disabled, or the delivery is already queued.",
    413: f"The body is over {MAX_BODY_BYTES} bytes.",
    422: "The request is well-formed but its values are not acceptable, or it has a query parameter the "
    "operation does not take; the message says why.",
    503: "ADMIN_TOKEN is not set: the admin API is disabled.",
}
"""What each refusal means, for every operation that may answer it."""
PATH_ID = RECORD_ID.json_schema()


class Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema with ``{"type": ["string", "null"]}`` for a nullable plain type (rather
    than an ``anyOf``) and without a title on every field."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if isinstance(inner.get("type"), str) and not {"$ref", "enum", "const"} & inner.keys():
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}

    def field_title_should_be_set(self, schema: CoreSchema | Any) -> bool:
        return False


def build_document(operations: Iterable[Operation], info: dict[str, Any]) -> dict[str, Any]:
    """The document: ``info``, then every operation, with every schema under ``components``."""
    operations = list(operations)
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Error, "serialization"): None}
    for operation in operations:
        wanted.update(dict.fromkeys((model, "validation") for model in operation.models.values()))
        if operation.response is not None:
            wanted[operation.response, "serialization"] = None
    refs, definitions = models_json_schema(list(wanted), ref_template=REF, schema_generator=Schemas)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    # A query model is its parameters, not a schema of its own.
    queries = {operation.models["query"] for operation in operations if "query" in operation.models}
    containers = {model: schemas.pop(refs[model, "validation"]["$ref"].rsplit("/", 1)[1]) for model in queries}
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation, refs, containers)
    return {
        "openapi": "3.1.0",
        "info": info,
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
            "schemas": dict(sorted(schemas.items())),
        },
    }


def _operation(operation: Operation, refs: dict[Any, Any], containers: dict[Any, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": HTTPStatus(operation.status).phrase}
    if operation.response is not None:
        success["description"] = (getdoc(operation.response) or "").split("\n\n", 1)[0]
        success["content"] = {JSON: {"schema": refs[operation.response, "serialization"]}}
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        **({"description": operation.description} if operation.description else {}),
        "tags": [operation.tag],
        "responses": {
            str(operation.status): success,
            **{str(status): _error(status, refs[Error, "serialization"]) for status in operation.error_statuses()},
        },
    }
    if operation.public:
        document["security"] = []
    parameters = [
        {"name": name, "in": "path", "required": True, "description": PATH_IDS[name], "schema": PATH_ID}
        for name in operation.path_ids
    ]
    if "query" in operation.models:
        parameters += _query_parameters(containers[operation.models["query"]])
    if parameters:
        document["parameters"] = parameters
    if "body" in operation.models:
        body = {JSON: {"schema": refs[operation.models["body"], "validation"]}}
        document["requestBody"] = {"required": not operation.body_optional, "content": body}
    return document


def _query_parameters(container: dict[str, Any]) -> list[dict[str, Any]]:
    """A parameter per property of a query model's schema."""
    required = set(container.get("required", ()))
    parameters = []
    for name, schema in container["properties"].items():
        schema = dict(schema)
        parameter = {"name": name, "in": "query", "required": name in required}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        parameters.append({**parameter, "schema": schema})
    return parameters


def _error(status: int, error: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": ERRORS[status], "content": {JSON: {"schema": error}}}
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string", "pattern": "^Bearer"}}
        }
    return response
