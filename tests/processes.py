"""The service as real OS processes, for the fault tests (kill -9) and the two-replica test.

A test here is a FreshBooks stand-in and a subscriber: the in-process simulator, a ``SinkServer``,
and ``webhook-service serve`` processes on one database, configured only through environment
variables and driven only from outside (HTTP, the admin API, the CLI). Nothing depends on how the
service works inside, so these tests keep their meaning whatever the pipeline looks like.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from webhook_service.config import Settings
from webhook_service.core.crypto import generate_key
from webhook_service.sandbox.simulator import SimulatorServer, signing
from webhook_service.sandbox.sink import Received, SinkServer

T = TypeVar("T")
OWNER_ACCOUNT_ID = "ABC123"
OWNER_BUSINESS_ID = 439000
STARTUP_TIMEOUT = 30.0
#: Environment variables the service reads: never inherited from whoever runs the tests.
SETTING_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def free_port() -> int:
    """A port for a child process to listen on, free now and not handed out twice by this process.

    Not the kernel's pick (``bind(0)``) where it can be helped: that port comes from the ephemeral
    range, where every outgoing connection's local port comes from too, so between this call and
    the child's bind another connection could take it ("address already in use"; seen with the
    suite on two processes). These come from below that range, a block of their own per test
    process (pytest-xdist worker); the kernel's pick only once the block is used up.
    """
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # something else listens there
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_block() -> range:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the kernel's pick
        return range(0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 20_000 + 1_000 * (int(worker) if worker.isdigit() else 0)
    return range(start, min(start + 1_000, low))  # empty when the ephemeral range starts lower


_PORTS = iter(_port_block())


def service_command() -> list[str]:
    script = Path(sys.executable).with_name("webhook-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook_service"]


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def service_env(database_url: str, simulator: SimulatorServer, public_port: int, **settings: object) -> dict[str, str]:
    """A service's whole configuration: the simulator as FreshBooks, loopback subscribers allowed,
    an admin token, JSON logs, no backfill sweeps (they would emit events the tests did not make)."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_VARIABLES}
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": generate_key(),
        "admin_token": secrets.token_urlsafe(24),
        "freshbooks_api_base": simulator.base_url,
        "freshbooks_auth_base": simulator.base_url,
        "freshbooks_client_id": simulator.state.client_id,
        "freshbooks_client_secret": simulator.state.client_secret,
        "freshbooks_events": "invoice",
        "public_base_url": f"http://127.0.0.1:{public_port}",
        "outbound_allowed_cidrs": "127.0.0.0/8",
        "backfill_enabled": "false",
        "auto_migrate": "always",  # only the first process finds work: the others start once it is ready
        "log_format": "json",
        "log_level": "warning",
        **settings,
    }
    env.update({name.upper(): str(value) for name, value in values.items()})
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0) -> str:
    """``webhook-service ARGS``; its stdout, or an error carrying the end of its stderr."""
    done = subprocess.run(
        [*service_command(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise AssertionError(f"webhook-service {' '.join(args[:2])} exited {done.returncode}:\n{tail}")
    return done.stdout


class ProcessDied(RuntimeError):
    pass


class Child:
    """A child process whose output (stdout and stderr) goes to a file, so a death can be explained."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(argv, env=env, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"

    def ensure_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProcessDied(f"{self.name} exited with code {code}; last output:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown hook runs, leases stay taken, connections drop mid-request."""
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


class ServiceProcess(Child):
    """``webhook-service serve --port PORT [ARGS]`` configured by ``env``."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path, args: Sequence[str] = ()) -> None:
        super().__init__(name, [*service_command(), "serve", "--port", str(port), *args], log_dir, env)
        self.port, self.env = port, env
        self.base_url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until ``/readyz`` answers 200 (the database answers, the schema is current)."""

        def ready() -> bool:
            self.ensure_alive()
            try:
                return httpx.get(f"{self.base_url}/readyz", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, f"{self.name} to be ready on port {self.port}", interval=0.1)


class Children:
    """Every child a test or benchmark starts; ``stop_all`` (in a ``finally``) stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.log_dir, env)
        self.started.append(child)
        return child

    def start_service(self, name: str, port: int, env: dict[str, str], args: Sequence[str] = ()) -> ServiceProcess:
        """A service process (``serve --port PORT ARGS``), once it is ready."""
        process = ServiceProcess(name, port, env, self.log_dir, args)
        self.started.append(process)
        process.wait_ready()
        return process

    def ensure_alive(self) -> None:
        for child in self.started:
            child.ensure_alive()

    def stop_all(self) -> None:
        for child in reversed(self.started):
            with contextlib.suppress(Exception):
                child.stop()
        self.started.clear()


@contextmanager
def children(log_dir: Path) -> Iterator[Children]:
    group = Children(log_dir)
    try:
        yield group
    finally:
        group.stop_all()


class Admin:
    """The admin API of a running service process."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=f"{base_url}/admin/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()["data"]

    def subscribe(self, url: str) -> str:
        response = self.client.post("/subscriptions", json={"url": url, "description": "test sink"})
        response.raise_for_status()
        return str(response.json()["id"])

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self.get("/deliveries", limit=1000))

    def all_succeeded(self, count: int) -> list[dict[str, Any]] | None:
        """The deliveries once there are ``count`` and every one has succeeded, else None."""
        deliveries = self.deliveries()
        return deliveries if len(deliveries) == count and all(d["status"] == "succeeded" for d in deliveries) else None

    def close(self) -> None:
        self.client.close()


def connect_tenant(simulator: SimulatorServer, env: dict[str, str], cwd: Path, admin: Admin) -> str:
    """``tenants import`` (which syncs callbacks), then wait for the invoice callback's handshake."""
    token = simulator.state.issue_refresh_token()
    imported = json.loads(
        run_cli(
            ["tenants", "import", "--refresh-token", token, "--business-id", str(OWNER_BUSINESS_ID), "--json"], env, cwd
        )
    )
    wait_until(
        lambda: any(
            c["event"] == "invoice" and c["active"] and c["state"] == "verified" for c in admin.get("/callbacks")
        ),
        STARTUP_TIMEOUT,
        "the invoice callback to be verified",
        interval=0.1,
    )
    return str(imported["id"])


class FreshBooksSender:
    """Plays FreshBooks: signed ``invoice.update`` deliveries to the invoice callback's URI."""

    def __init__(self, simulator: SimulatorServer) -> None:
        [callback] = [c for c in simulator.state.list_callbacks(OWNER_ACCOUNT_ID, "invoice") if c["verified"]]
        self.path = "/webhooks/" + callback["uri"].split("/webhooks/", 1)[1]
        self.verifier = simulator.state.callback_verifier(callback["callbackid"])

    def post(self, client: httpx.Client, base_url: str, object_id: int) -> int | None:
        """The response status, or None when no response came (the process died mid-request)."""
        message = {
            "name": "invoice.update",
            "object_id": str(object_id),
            "account_id": OWNER_ACCOUNT_ID,
            "business_id": str(OWNER_BUSINESS_ID),
            "identity_id": "12345",
            "user_id": "1",
        }
        headers = {
            "Content-Type": signing.FORM_CONTENT_TYPE,
            signing.SIGNATURE_HEADER: signing.sign(self.verifier, message),
        }
        try:
            return client.post(base_url + self.path, content=signing.encode(message), headers=headers).status_code
        except httpx.TransportError:
            return None

    def stream(
        self,
        targets: Iterable[tuple[str, int]],
        *,
        concurrency: int = 8,
        on_accepted: Callable[[int], None] | None = None,
    ) -> dict[int, int | None]:
        """POST each ``(base_url, object_id)``, ``concurrency`` at a time; the status per object.

        ``on_accepted(count)`` runs (on a sending thread) after each 2xx, with the running count.
        """
        statuses: dict[int, int | None] = {}
        accepted = 0
        counting = threading.Lock()
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

        with httpx.Client(timeout=10.0, limits=limits) as client, ThreadPoolExecutor(concurrency) as pool:

            def send(target: tuple[str, int]) -> None:
                nonlocal accepted
                base_url, object_id = target
                status = statuses[object_id] = self.post(client, base_url, object_id)
                if status is not None and 200 <= status < 300 and on_accepted is not None:
                    with counting:  # each count goes to exactly one call
                        accepted += 1
                        count = accepted
                    on_accepted(count)

            list(pool.map(send, targets))
        return statuses


def accepted(statuses: dict[int, int | None]) -> set[str]:
    """The object ids whose delivery the service answered with a 2xx."""
    return {str(object_id) for object_id, status in statuses.items() if status is not None and 200 <= status < 300}


def webhook_ids_by_object(received: list[Received]) -> dict[str, list[str]]:
    """Per FreshBooks object id, the ``webhook-id`` of each request the sink got for it, in order."""
    found: dict[str, list[str]] = defaultdict(list)
    for request in received:
        found[str(json.loads(request.body)["data"]["object_id"])].append(request.headers["webhook-id"])
    return dict(found)


def changing_ids(by_object: dict[str, list[str]]) -> dict[str, list[str]]:
    """Objects that reached the sink under more than one ``webhook-id`` (a repeat must not change it)."""
    return {object_id: ids for object_id, ids in by_object.items() if len(set(ids)) > 1}


@dataclass
class Deployment:
    """A database, one running service with a connected tenant, the sink subscribed."""

    env: dict[str, str]
    port: int
    processes: Children
    first: ServiceProcess
    admin: Admin
    sender: FreshBooksSender
    tenant_id: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self, name: str) -> ServiceProcess:
        """A new process on the same database and port (after the previous one died)."""
        return self.processes.start_service(name, self.port, self.env)


@contextmanager
def deployment(
    database_url: str, simulator: SimulatorServer, sink: SinkServer, log_dir: Path, **settings: object
) -> Iterator[Deployment]:
    port = free_port()
    env = service_env(database_url, simulator, port, **settings)
    with children(log_dir) as processes:
        first = processes.start_service("service-1", port, env)
        admin = Admin(first.base_url, env["ADMIN_TOKEN"])
        try:
            tenant_id = connect_tenant(simulator, env, log_dir, admin)
            admin.subscribe(f"{sink.base_url}/hook")
            yield Deployment(env, port, processes, first, admin, FreshBooksSender(simulator), tenant_id)
        finally:
            admin.close()
