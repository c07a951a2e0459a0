"""``webhook-service demo``: the whole pipeline on one machine, narrated, in a few seconds.

A newcomer should see what the service does before reading about it. Everything here is the real
thing on 127.0.0.1: the FreshBooks simulator posts signed webhooks over HTTP to the service (the
production app with its lifespan: inbox processor and delivery workers running), which verifies
them, fetches each object from the simulator's API, normalizes it and delivers it, signed the
Standard Webhooks way, to a local subscriber (the sink), where the demo checks every signature with
the ``standardwebhooks`` library. The database is SQLite in a temporary directory, removed at the
end (Ctrl-C included); the service's log goes to a file there so it does not drown the narration.

No step sleeps: each one waits on a condition (the sink's arrivals, the simulator's delivery queue,
the service's background tasks) with a deadline, and a missed deadline is a failure that says
where to look.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.core.logs import configure_logging, get_logger
from webhook_service.sandbox.serving import BackgroundServer, bind_socket
from webhook_service.sandbox.simulator import SimulatorServer, SimulatorState
from webhook_service.sandbox.sink import Received, SinkServer

T = TypeVar("T")
log = get_logger(__name__)

DEADLINE_SECONDS = 15.0
"""How long any one step may wait. Loopback work takes milliseconds; this only bounds a failure."""

ACCOUNT_ID = "ABC123"  # the simulator's owner business, 439000 "Awesome Inc."
BUSINESS_ID = 439000
SINK_PATH = "/demo-subscriber"


class DemoError(Exception):
    """A step did not happen as it should; the message says which and where to look."""


@dataclass(frozen=True)
class Options:
    keep_running: bool = False
    as_json: bool = False
    program: str = "webhook-service"
    """The command line as the user started it (``.venv/bin/webhook-service``), for hints that work as written."""


def run(options: Options, out: TextIO | None = None) -> int:
    """Run the demo; the exit code is 0 when every step happened as narrated."""
    narrator = Narrator(out or sys.stdout, as_json=options.as_json)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-service-demo-"))
    log_file = workdir / "service.log"
    configure_logging("info", "json", log_file=str(log_file))
    started = time.monotonic()
    code = 0
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            demo = _Demo(narrator, workdir, stack, options.program)
            demo.run(started)
            if options.keep_running:
                demo.keep_running()
            narrator.say("shutting down: service, subscriber, simulator")
    except KeyboardInterrupt:
        narrator.say("interrupted: shut down cleanly", kind="interrupted")
        code = 0 if options.keep_running else 130
    except Exception as exc:  # a failed step (or a bug): one readable line, the details in the log
        if not isinstance(exc, DemoError):
            log.exception("demo_failed")
        narrator.say(f"FAILED: {exc if isinstance(exc, DemoError) else f'{type(exc).__name__}: {exc}'}", kind="failed")
        _print_log_tail(log_file, narrator)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        configure_logging("warning", "auto")  # closes the file handler before its directory goes
        shutil.rmtree(workdir, ignore_errors=True)
        narrator.say(f"removed {workdir}", kind="cleanup", workdir=str(workdir), removed=not workdir.exists())
    return code


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``) shuts the demo down like Ctrl-C: servers stopped, directory removed."""
    raise KeyboardInterrupt


class Narrator:
    """One line per thing that happened: plain text for people, or JSON objects with ``--json``."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out: TextIO | None = out
        self._json = as_json

    def step(self, number: int, title: str) -> None:
        if self._json:
            self._write({"kind": "step", "step": number, "text": title})
        else:
            self._write_text(f"\n[{number}/5] {title}")

    def say(self, text: str, *, kind: str = "info", **data: Any) -> None:
        if self._json:
            self._write({"kind": kind, "text": text, **data})
        else:
            self._write_text(f"  {text}")

    def _write(self, record: dict[str, Any]) -> None:
        self._write_text(json.dumps(record, default=str))

    def _write_text(self, line: str) -> None:
        if self._out is None:
            return
        try:
            print(line, file=self._out, flush=True)  # flushed: a pipe must see each line as it happens
        except BrokenPipeError:  # e.g. `| head`: stop narrating, but still finish and clean up
            self._out = None


class _Demo:
    """The five steps, over three servers started on free loopback ports."""

    def __init__(self, narrator: Narrator, workdir: Path, stack: contextlib.ExitStack, program: str) -> None:
        self.narrator = narrator
        self.program = program
        self.workdir = workdir
        self._stack = stack
        self.received = 0  # sink arrivals already shown
        self.verified = 0
        self.origins: dict[str, int] = {}
        self.secret = ""
        self.tenant_id = ""

    def run(self, started: float) -> None:
        """``started``: ``time.monotonic()`` when the command began, for the summary."""
        self.start()
        self.connect()
        self.live_changes()
        self.drop_and_backfill()
        self.summary(time.monotonic() - started)

    # -- 1: three servers ------------------------------------------------------------------------
    def start(self) -> None:
        say = self.narrator.say
        self.narrator.step(1, "Start the FreshBooks simulator, a subscriber and the service")
        self.simulator = self._stack.enter_context(SimulatorServer(SimulatorState(seed=7)))
        say(
            f"FreshBooks simulator  {self.simulator.base_url}  (OAuth, API, webhooks)",
            server="simulator",
            url=self.simulator.base_url,
        )
        self.sink = self._stack.enter_context(SinkServer())
        say(
            f"subscriber (sink)     {self.sink.base_url}{SINK_PATH}  (records what it receives)",
            server="sink",
            url=f"{self.sink.base_url}{SINK_PATH}",
        )
        sock = self._stack.enter_context(contextlib.closing(bind_socket("127.0.0.1", 0)))
        self.admin_token = secrets.token_urlsafe(24)
        self.settings = demo_settings(self.workdir, self.simulator, sock.getsockname()[1], self.admin_token)
        self.service = self._stack.enter_context(BackgroundServer(_create_app(self.settings), sock=sock, lifespan="on"))
        say(
            f"service               {self.service.base_url}  (inbox processor and delivery workers running)",
            server="service",
            url=self.service.base_url,
        )
        say(f"database              {self.workdir / 'service.db'}  (SQLite, temporary)")
        say(f"service log           {self.workdir / 'service.log'}")
        self.admin = self._stack.enter_context(
            httpx.Client(
                base_url=f"{self.service.base_url}/admin/v1",
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=DEADLINE_SECONDS,
            )
        )
        self.sim = self._stack.enter_context(httpx.Client(base_url=self.simulator.base_url, timeout=DEADLINE_SECONDS))

    # -- 2: tenant, callbacks, subscription ------------------------------------------------------
    def connect(self) -> None:
        from webhook_service.inbound import registrar
        from webhook_service.storage.models import Tenant
        from webhook_service.tenants import onboarding

        say = self.narrator.say
        self.narrator.step(2, "Connect the simulator's business and subscribe to its events")
        token = _json(self.sim.post("/_sim/refresh-tokens", json={}))["refresh_token"]
        say("the simulator issued a refresh token (single-use; the service rotates it at once)")
        runtime = self.runtime
        tenant = self._on_service(onboarding.import_refresh_token(runtime, token, BUSINESS_ID))
        if not isinstance(tenant, Tenant):
            raise DemoError("the simulator's login should connect business 439000 directly")
        self.tenant = tenant
        self.tenant_id = tenant.id
        say(
            f"tenant connected: {tenant.id}  {tenant.name} "
            f"(business {tenant.business_id}, account {tenant.account_id})",
            kind="tenant_connected",
            tenant_id=tenant.id,
        )
        report = self._on_service(registrar.sync_tenant(runtime, tenant))
        if report.error:
            raise DemoError(f"callbacks sync failed: {report.error}")
        say(f"callbacks sync: created {len(report.created)} FreshBooks callbacks, one per event noun")
        # FreshBooks POSTs a verifier to each new callback; the service answers, then PUTs it back.
        self.simulator.state.flush_deliveries(DEADLINE_SECONDS)
        self._on_service(runtime.tasks.idle())
        callbacks = _json(self.admin.get("/callbacks", params={"tenant_id": tenant.id}))["data"]
        verified = sorted(c["event"] for c in callbacks if c["state"] == "verified")
        if not callbacks or len(verified) != len(callbacks):
            pending = sorted(c["event"] for c in callbacks if c["state"] != "verified")
            raise DemoError(f"callbacks not verified: {', '.join(pending) or 'none created'}")
        say(
            f"callbacks verified: {len(verified)} of {len(callbacks)} ({', '.join(verified)})",
            kind="callbacks_verified",
            count=len(verified),
        )
        created = _json(
            self.admin.post(
                "/subscriptions", json={"url": f"{self.sink.base_url}{SINK_PATH}", "description": "demo subscriber"}
            )
        )
        self.secret = created["secret"]
        say(
            f"subscription {created['id']} -> {created['url']} for every event type",
            kind="subscription_created",
            subscription_id=created["id"],
        )
        say(
            f"signing secret created: {self.secret[:10]}... (shown once; the subscriber verifies with it)",
            kind="secret_created",
        )

    # -- 3: live changes ---------------------------------------------------------------------------
    def live_changes(self) -> None:
        self.narrator.step(3, "Change things in FreshBooks (the simulator) and watch the events arrive")
        # These changes often share a second of FreshBooks' `updated` stamp; an object version is
        # its content too, so each state still reaches the sink.
        client = self._change(
            "create a client",
            "POST",
            "client",
            {"fname": "Ada", "lname": "Lovelace", "organization": "Analytical Engines Ltd"},
        )
        self.client_id = client["id"]
        invoice = self._change(
            "create an invoice for her",
            "POST",
            "invoice",
            {
                "customerid": client["id"],
                "fname": "Ada",
                "lname": "Lovelace",
                "organization": "Analytical Engines Ltd",
                "status": 1,
                "v3_status": "draft",
            },
        )
        self._change("send the invoice", "PUT", f"invoice/{invoice['id']}", {"status": 2, "v3_status": "sent"})
        self._change("start a project", "POST", "project", {"title": "Difference engine", "client_id": client["id"]})
        self._change("delete the invoice", "DELETE", f"invoice/{invoice['id']}", None)

    def _change(self, what: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One change in the simulator, then wait for (and show) the event it causes at the sink."""
        changed = _json(self.sim.request(method, f"/_sim/objects/{ACCOUNT_ID}/{path}", json=body))
        self.narrator.say(f"-> {what}: {path.split('/')[0]} {changed['id']}", kind="change", object_id=changed["id"])
        self._show_arrivals(self.received + 1)
        return changed

    # -- 4: a lost webhook and the backfill --------------------------------------------------------
    def drop_and_backfill(self) -> None:
        from webhook_service.backfill.sweep import backfill_tenant

        say = self.narrator.say
        self.narrator.step(4, "FreshBooks loses a webhook; the backfill recovers it")
        since = datetime.now(UTC) - timedelta(minutes=1)
        state = self.simulator.state
        _json(self.sim.post("/_sim/delivery-settings", json={"drop_rate": 1.0}))
        try:
            self._sim_change("PUT", f"client/{self.client_id}", {"organization": "Difference Engines Ltd"})
        finally:
            _json(self.sim.post("/_sim/delivery-settings", json={"drop_rate": 0.0}))
        say(f"-> rename the client (client {self.client_id}) while FreshBooks drops every webhook", kind="change")
        state.flush_deliveries(DEADLINE_SECONDS)
        last = _json(self.sim.get("/_sim/deliveries"))[-1]
        if not (last["dropped"] and last["fields"]["name"] == "client.update"):
            raise DemoError(f"expected the client.update webhook to be dropped, the simulator logged {last}")
        say("FreshBooks (simulator) dropped the client.update webhook: it was never sent", kind="dropped")
        self._on_service(self.runtime.tasks.idle())
        inbox = _json(self.admin.get("/inbox-events", params={"tenant_id": self.tenant_id}))["data"]
        if any(row["event_name"] == "client.update" for row in inbox):
            raise DemoError("the dropped client.update reached the service's inbox")
        say(
            f"the service's inbox has no client.update; the subscriber still has {self.received} events",
            kind="not_arrived",
        )
        report = self._on_service(backfill_tenant(self.runtime, self.tenant, since=since))
        if report.failed:
            raise DemoError(f"backfill failed: {report.as_dict()}")
        totals = report.as_dict()["totals"]
        say(
            f"backfill polled {len(report.resources)} resources: {totals['scanned']} objects changed since "
            f"{since:%H:%M:%S} UTC, {totals['known']} already known, {totals['emitted']} emitted",
            kind="backfill",
            **totals,
        )
        before = self.origins.get("backfill", 0)
        self._show_arrivals(self.received + 1)
        if self.origins.get("backfill", 0) != before + 1:
            raise DemoError("the recovered event did not arrive with origin backfill")
        say("recovered: the rename reached the subscriber with origin backfill", kind="recovered")

    def _sim_change(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return _json(self.sim.request(method, f"/_sim/objects/{ACCOUNT_ID}/{path}", json=body))

    # -- 5: summary ----------------------------------------------------------------------------------
    def summary(self, elapsed: float) -> None:
        say = self.narrator.say
        self.narrator.step(5, "Summary")
        events = _json(self.admin.get("/events", params={"tenant_id": self.tenant_id, "limit": 1000}))["data"]
        succeeded = _json(self.admin.get("/deliveries", params={"status": "succeeded", "limit": 1000}))["data"]
        origins = ", ".join(f"{count} from {origin}" for origin, count in sorted(self.origins.items(), reverse=True))
        say(
            f"{self.received} events delivered to the subscriber ({origins}), "
            f"{self.verified} Standard Webhooks signatures verified",
            kind="summary",
            delivered=self.received,
            verified=self.verified,
            origins=self.origins,
        )
        say(f"the service stored {len(events)} events and {len(succeeded)} succeeded deliveries")
        say(f"all of it in {elapsed:.1f} s", kind="timing", seconds=round(elapsed, 2))
        say(f"the data is in {self.workdir} (SQLite service.db, service.log), removed when the demo ends")
        hints = (
            (f"{self.program} demo --keep-running", "leave it all up and poke around (Ctrl-C to stop)"),
            (f"{self.program} simulator --port 8100", "a simulator of your own (README: Trying it without...)"),
            (f"DEV_MODE=true {self.program} serve", "the service itself, on ./data"),
        )
        width = max(len(command) for command, _ in hints)
        say("try next:")
        for command, what in hints:
            say(f"  {command.ljust(width)}  {what}")

    def keep_running(self) -> None:
        """Leave everything up, show how to reach it, and keep showing arrivals until Ctrl-C."""
        say = self.narrator.say
        env = demo_env(self.settings)
        say(
            "everything is still running; Ctrl-C stops it and removes the temporary directory",
            kind="keep_running",
            service_url=self.service.base_url,
            admin_token=self.admin_token,
            simulator_url=self.simulator.base_url,
        )
        say(f"service    {self.service.base_url}   admin token: {self.admin_token}")
        say(f"  curl -H 'Authorization: Bearer {self.admin_token}' {self.service.base_url}/admin/v1/events")
        say(f"console    {self.service.base_url}/console   (sign in with the admin token)")
        say(f"simulator  {self.simulator.base_url}   make a change:")
        say(
            f"  curl -X POST -H 'Content-Type: application/json' -d '{{\"organization\": \"Babbage & Co\"}}' "
            f"{self.simulator.base_url}/_sim/objects/{ACCOUNT_ID}/client"
        )
        say("the CLI on this database (in another terminal):")
        say("  " + " ".join(f"{key}='{value}'" for key, value in env.items()) + f" {self.program} events list")
        say("events arriving at the subscriber:")
        while True:  # each wait is bounded so Ctrl-C is seen at once
            with contextlib.suppress(TimeoutError):
                self._show_arrivals(self.received + 1, timeout=1.0)

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def runtime(self) -> Any:
        return self.service.app.state.runtime  # type: ignore[attr-defined]

    def _on_service(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the service's own event loop, where its database pool and wake-up signals live."""
        return self.service.run_coroutine(coro, DEADLINE_SECONDS)

    def _show_arrivals(self, count: int, timeout: float = DEADLINE_SECONDS) -> None:
        """Wait until the sink holds ``count`` requests, then show each new one as it was received."""
        try:
            arrived = self.sink.sink.wait_for(count, timeout)
        except TimeoutError as exc:
            if timeout < DEADLINE_SECONDS:
                raise
            raise DemoError(f"no event reached the subscriber within {timeout:.0f} s ({exc})") from exc
        for request in arrived[self.received :]:
            self._show(request)
            self.received += 1

    def _show(self, request: Received) -> None:
        try:
            event = Webhook(self.secret).verify(request.body, request.headers)
            check = "signature verified"
            self.verified += 1
        except WebhookVerificationError as exc:
            event = json.loads(request.body)
            check = f"SIGNATURE INVALID ({exc})"
        data = event["data"]
        self.origins[data["origin"]] = self.origins.get(data["origin"], 0) + 1
        self.narrator.say(
            f"<- {event['type']:<16} {describe(data)}  [{data['origin']}, {check}, {event['id']}]",
            kind="received",
            type=event["type"],
            id=event["id"],
            origin=data["origin"],
            object_id=data["object_id"],
            signature_verified=check == "signature verified",
        )


def demo_settings(workdir: Path, simulator: SimulatorServer, port: int, admin_token: str) -> Settings:
    """The service's settings: temporary SQLite, fresh keys, the simulator as FreshBooks, loopback egress."""
    values: dict[str, object] = {
        "database_url": f"sqlite+aiosqlite:///{workdir / 'service.db'}",
        "auto_migrate": "always",
        "secret_key": generate_key(),
        "dev_mode": False,
        "admin_token": admin_token,
        "public_base_url": f"http://127.0.0.1:{port}",
        "freshbooks_api_base": simulator.base_url,
        "freshbooks_auth_base": simulator.base_url,
        "freshbooks_client_id": simulator.state.client_id,
        "freshbooks_client_secret": simulator.state.client_secret,
        "freshbooks_events": "",  # every noun
        "outbound_allowed_cidrs": "127.0.0.0/8 ::1/128",  # the subscriber listens on loopback
        "outbound_https_only": False,
        "backfill_enabled": False,  # the demo runs the backfill itself, at the moment it matters
        "callback_sync_interval": 3600,
        "_env_file": None,  # a .env in the working directory must not redirect the demo
    }
    return Settings(**values)  # type: ignore[arg-type]


def demo_env(settings: Settings) -> dict[str, str]:
    """The environment a CLI command needs to work on the demo's database (``--keep-running``)."""
    assert settings.secret_key is not None
    return {
        "DATABASE_URL": settings.database_url,
        "SECRET_KEY": settings.secret_key.get_secret_value(),
        "FRESHBOOKS_API_BASE": settings.freshbooks_api_base,
        "FRESHBOOKS_AUTH_BASE": settings.freshbooks_auth_base,
        "FRESHBOOKS_CLIENT_ID": settings.freshbooks_client_id,
        "FRESHBOOKS_CLIENT_SECRET": settings.freshbooks_client_secret.get_secret_value(),
        "PUBLIC_BASE_URL": settings.public_base_url,
    }


_NUMBER_FIELDS = ("invoice_number", "estimate_number", "credit_number")
_NAME_FIELDS = ("title", "name")


def describe(data: dict[str, Any]) -> str:
    """A one-line summary of the event's object: what it is, whose, how much, what state."""
    obj = data.get("object")
    head = f"{data['resource']} {data['object_id']}"
    if obj is None:
        return f"{head} (no longer exists)"
    number = next((obj[key] for key in _NUMBER_FIELDS if obj.get(key)), None)
    name = next((obj[key] for key in _NAME_FIELDS if obj.get(key)), None)
    parts = [f"{head} #{number}" if number else f'{head} "{name}"' if name else head]
    person = " ".join(str(obj[key]) for key in ("fname", "lname") if obj.get(key))
    organization = obj.get("organization")
    if person or organization:
        parts.append(f"{person} ({organization})" if person and organization else person or str(organization))
    amount = obj.get("amount")
    if isinstance(amount, dict) and "amount" in amount:
        parts.append(f"{amount['amount']} {amount.get('code', '')}".strip())
    if obj.get("vis_state") == 1:
        parts.append("deleted")
    elif obj.get("v3_status"):
        parts.append(str(obj["v3_status"]))
    return ", ".join(parts)


def _create_app(settings: Settings) -> Any:
    from webhook_service.app import create_app

    return create_app(settings)


def _json(response: httpx.Response) -> Any:
    if response.is_error:
        raise DemoError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return response.json()


def _print_log_tail(log_file: Path, narrator: Narrator, lines: int = 20) -> None:
    """On failure, the end of the service's log (about to be removed with the directory)."""
    with contextlib.suppress(OSError):
        tail = log_file.read_text(encoding="utf-8").splitlines()[-lines:]
        narrator.say(f"last {len(tail)} lines of {log_file}:", kind="log")
        for line in tail:
            narrator.say(f"  {line}", kind="log")
