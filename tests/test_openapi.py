"""The admin API's OpenAPI document: generated from the operations table, served as generated, valid
OpenAPI 3.1, and in step with the routes the running app serves (a drift check both ways)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import schemathesis
from pydantic import BaseModel
from starlette.routing import Route

from webhook_service.runtime import Runtime
from webhook_service.web import admin, schemas
from webhook_service.web.openapi import build_document
from webhook_service.web.operations import Operations

P = admin.PREFIX


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def test_the_served_document_is_the_one_generated_from_the_operations_table(service):
    async with httpx.AsyncClient(base_url=service.base_url) as client:  # no token: the document is public
        response = await client.get(f"{P}/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    generated = build_document(admin.operation.table, admin.INFO)
    assert response.json() == json.loads(json.dumps(generated)) == json.loads(json.dumps(admin.DOCUMENT))
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "webhook-service admin API"
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "ADMIN_TOKEN",
    }
    assert document["paths"][f"{P}/openapi.json"]["get"]["security"] == []


def test_every_admin_route_the_app_serves_is_documented_and_every_operation_is_served(service):
    """Drift both ways, over the app's routes (not only the admin module's), HEAD aside."""
    served = {
        (method, route.path)
        for route in service.server.app.routes
        if isinstance(route, Route) and route.path.startswith(P + "/")
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served == _documented(admin.DOCUMENT)
    assert _documented(admin.DOCUMENT) == {(op.method, op.path) for op in admin.operation.table}


def test_the_document_is_valid_openapi_3_1():
    loaded = schemathesis.openapi.from_dict(admin.DOCUMENT)
    loaded.validate()  # against the OpenAPI 3.1 meta-schema
    assert {operation.ok().label for operation in loaded.get_all_operations()} == {
        f"{method} {path}" for method, path in _documented(admin.DOCUMENT)
    }
    broken = schemathesis.openapi.from_dict({**admin.DOCUMENT, "info": {"version": "1"}})  # the title is required
    with pytest.raises(Exception, match="title"):
        broken.validate()


def test_each_operation_documents_the_models_its_route_validates_and_answers_with():
    components = admin.DOCUMENT["components"]["schemas"]
    for op in admin.operation.table:
        documented = admin.DOCUMENT["paths"][op.path][op.method.lower()]
        assert documented["summary"] == " ".join(op.handler.__doc__.split("\n\n")[0].split()), op.operation_id
        if "body" in op.models:
            body = documented["requestBody"]["content"]["application/json"]["schema"]
            assert body == {"$ref": f"#/components/schemas/{op.models['body'].__name__}"}, op.operation_id
            assert documented["requestBody"]["required"] is not op.models["body"].optional
        parameters = [(p["in"], p["name"]) for p in documented.get("parameters", [])]
        query = op.models.get("query")
        expected = [("path", name) for name in re.findall(r"\{(\w+)\}", op.path)]
        expected += [("query", field.alias or name) for name, field in (query.model_fields if query else {}).items()]
        assert parameters == expected, op.operation_id
        content = documented["responses"][str(op.status)].get("content")
        if op.response is None:
            assert content is None
        else:
            assert content["application/json"]["schema"]["$ref"].endswith(f"/{op.response.__name__}")
        for status, response in documented["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    # One name a schema, as the models are named (no "Page_Tenant_" for a generic, no "-Input" for a mode).
    assert all(name.isalpha() for name in components), sorted(components)


def test_a_handler_with_input_or_texts_the_document_cannot_state_cannot_be_added():
    """The table reads a handler's input and summary off it, so there is no undocumented input."""
    table = Operations("/x", authorize=lambda request: None, translate=lambda exc: None)

    async def loose_parameter(runtime: Runtime, limit: int) -> None:
        """A query parameter outside a query model."""

    async def not_a_model(runtime: Runtime, query: dict) -> None:
        """A query that is no model."""

    async def undescribed_id(runtime: Runtime, widget_id: str) -> None:
        """A path id no one described."""

    async def missing_id(runtime: Runtime) -> None:
        """No parameter for the path's id."""

    async def undocumented(runtime: Runtime, tenant_id: str) -> None:
        pass

    for handler, path in [
        (loose_parameter, "/y"),
        (not_a_model, "/y"),
        (undescribed_id, "/y/{widget_id}"),
        (missing_id, "/y/{tenant_id}"),
        (undocumented, "/y/{tenant_id}"),
    ]:
        with pytest.raises(TypeError, match=handler.__name__):
            table("GET", path, None, tag="t")(handler)
    assert table.table == []


def test_no_answer_model_has_a_field_for_a_secret_but_the_one_that_shows_it():
    views = [
        model
        for model in vars(schemas).values()
        if isinstance(model, type) and issubclass(model, schemas.View) and model.__module__ == schemas.__name__
    ]
    assert all(issubclass(model, BaseModel) for model in views)
    for model in views:
        assert model.model_config.get("extra") == "forbid", model
        secretive = [name for name in model.model_fields if any(w in name for w in ("token", "verifier", "key"))]
        assert not secretive, (model, secretive)
        assert ("secret" in model.model_fields) == (model is schemas.SubscriptionWithSecret), model
