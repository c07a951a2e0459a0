"""The published event catalogue: valid schemas, examples that match them, the same list everywhere
it is served (module, admin API, CLI, README), and schemas strict enough to catch a stray field.

Every event the rest of the suite emits or receives is checked against the same schemas by
``conftest`` (see tests/event_contract.py).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from event_contract import problems
from jsonschema import Draft202012Validator

from webhook_service.contract import schemas as catalogue
from webhook_service.contract import types
from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.web import admin

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "catalogue-admin-token"
KINDS = list(catalogue.EVENT_TYPES)


@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_is_valid_and_its_example_matches_it(kind):
    entry = catalogue.get(kind)
    Draft202012Validator.check_schema(entry.schema)
    assert entry.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert entry.schema["$id"] == f"urn:webhook-service:event:{kind}"
    assert entry.type == kind and entry.example["type"] == kind and entry.description
    assert entry.origin == ("service" if types.is_operational(kind) else "freshbooks")
    assert problems(entry.example) == []


def test_the_catalogue_is_every_type_the_service_emits_in_order():
    assert list(catalogue.EVENT_TYPES) == list(types.ALL_TYPES)
    assert set(CATALOGUE) == set(types.FRESHBOOKS_NOUNS)
    assert catalogue.get("invoice.sent_by_email").schema["properties"]["data"]["properties"]["freshbooks_event"][
        "properties"
    ]["name"] == {"const": "invoice.sendByEmail"}
    with pytest.raises(KeyError):
        catalogue.get("invoice.sent")


@pytest.mark.parametrize("kind", ["invoice.updated", "project.deleted", "delivery.dead", "backfill.recovered"])
def test_a_field_added_or_left_out_without_its_schema_fails(kind):
    """The guard the whole suite relies on: a payload that grew a field its schema lacks is refused."""
    extra = copy.deepcopy(catalogue.get(kind).example)
    extra["data"]["added_later"] = "x"
    assert any(f"{kind} at $.data:" in problem and "additionalProperties" in problem for problem in problems(extra))
    on_the_envelope = {**copy.deepcopy(catalogue.get(kind).example), "attempt": 1}
    assert any(f"{kind} at $:" in problem for problem in problems(on_the_envelope))
    missing = copy.deepcopy(catalogue.get(kind).example)
    del missing["data"]["sequence"]
    assert any("'sequence' is a required property" in problem for problem in problems(missing))
    wrong = copy.deepcopy(catalogue.get(kind).example)
    wrong["data"]["sequence"] = 0
    assert any(f"{kind} at $.data.sequence:" in problem for problem in problems(wrong))


def test_freshbooks_fields_are_open_where_freshbooks_owns_them_and_closed_elsewhere():
    event = copy.deepcopy(catalogue.get("invoice.updated").example)
    event["data"]["object"]["a_field_freshbooks_added"] = {"any": "shape"}
    event["data"]["freshbooks_event"]["identity_id"] = "12345"
    assert problems(event) == []
    event["data"]["freshbooks_event"]["identity_id"] = 12345  # FreshBooks' form fields are strings
    assert problems(event)
    gone = copy.deepcopy(catalogue.get("invoice.deleted").example)
    gone["data"]["object"], gone["data"]["version"] = None, None
    assert problems(gone) == []
    del event["data"]["object"]["id"]
    assert any("'id' is a required property" in problem for problem in problems(event))
    renamed = copy.deepcopy(catalogue.get("invoice.updated").example)
    renamed["data"]["freshbooks_event"]["name"] = "invoice.create"
    assert problems(renamed)


def test_operational_nullability_follows_the_builders():
    disabled = copy.deepcopy(catalogue.get("subscription.disabled").example)
    assert disabled["data"]["tenant_id"] is None and problems(disabled) == []
    reauth = copy.deepcopy(catalogue.get("tenant.reauth_required").example)
    reauth["data"]["tenant_id"] = None
    assert problems(reauth)
    dead = copy.deepcopy(catalogue.get("delivery.dead").example)
    dead["data"] |= {"last_status_code": None, "last_error": None, "tenant_id": None}
    assert problems(dead) == []
    recovered = copy.deepcopy(catalogue.get("backfill.recovered").example)
    recovered["data"]["recovered"] = {"invoices": 2}
    assert any("$.data.recovered" in problem for problem in problems(recovered))


# --- served the same everywhere ----------------------------------------------------------------


@pytest.fixture
def settings(database_url, simulator, service_socket):
    return make_settings(database_url, simulator, service_socket, admin_token=ADMIN_TOKEN)


async def test_the_admin_api_serves_the_catalogue(service):
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=service.base_url + admin.PREFIX, headers=headers) as api:
        listed = (await api.get("/event-types")).json()["data"]
        one = await api.get("/event-types/callback.replaced")
        unknown = await api.get("/event-types/invoice.sent")
    async with httpx.AsyncClient(base_url=service.base_url + admin.PREFIX) as anonymous_client:
        anonymous = await anonymous_client.get("/event-types")
    assert [row["type"] for row in listed] == list(types.ALL_TYPES)
    entry = catalogue.get("invoice.updated")
    assert listed[1] == {"type": entry.type, "origin": entry.origin, "description": entry.description}
    assert one.status_code == 200
    replaced = catalogue.get("callback.replaced")
    assert one.json() == {
        "type": "callback.replaced",
        "origin": "service",
        "description": replaced.description,
        "schema": replaced.schema,
        "example": replaced.example,
    }
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found" and "invoice.sent" in unknown.json()["message"]
    assert set(unknown.json()) == {"error", "message", "request_id"}
    assert anonymous.status_code == 401


def _bare(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with an empty environment: no SECRET_KEY, no DATABASE_URL, nothing."""
    return subprocess.run(
        [sys.executable, "-m", "webhook_service", *args], env={}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_cli_lists_and_shows_the_catalogue_without_a_database_or_key(tmp_path):
    as_json = _bare(["event-types", "list", "--json"], tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert [row["type"] for row in json.loads(as_json.stdout)] == list(types.ALL_TYPES)
    as_text = _bare(["event-types", "list"], tmp_path)
    lines = as_text.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[kind.type, kind.origin] for kind in catalogue.EVENT_TYPES.values()]
    assert lines[0].endswith(catalogue.get(types.ALL_TYPES[0]).description)  # piped: whole
    shown = _bare(["event-types", "show", "delivery.dead", "--json"], tmp_path)
    assert json.loads(shown.stdout)["schema"] == catalogue.get("delivery.dead").schema
    text = _bare(["event-types", "show", "delivery.dead"], tmp_path).stdout
    assert text.startswith("delivery.dead (service)\n" + catalogue.get("delivery.dead").description + "\n")
    assert '"$id": "urn:webhook-service:event:delivery.dead"' in text and "example:" in text
    unknown = _bare(["event-types", "show", "invoice.sent"], tmp_path)
    assert unknown.returncode == 1 and unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert line.startswith("error: no event type 'invoice.sent'")
    assert list(tmp_path.iterdir()) == []  # no ./data, no database file


def test_the_readme_table_is_the_generated_one():
    spec = importlib.util.spec_from_file_location("event_types_readme", ROOT / "scripts" / "event_types_readme.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert generator.render(readme) == readme, (
        "README.md's table of event types is not the one the catalogue makes: "
        "run `.venv/bin/python scripts/event_types_readme.py` to regenerate it"
    )
    for kind in types.ALL_TYPES:
        assert f"| `{kind}` |" in readme


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`event-types list | head -1`: the CLI stops quietly when its reader goes (the status a shell
    gives SIGPIPE), whatever command prints. The reader is gone before the first line, on purpose."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        gone = subprocess.run(
            [sys.executable, "-m", "webhook_service", "event-types", "list"],
            env={},
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (gone.returncode, gone.stderr) == (141, "")
