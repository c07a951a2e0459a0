"""Run modes: a web process that only takes webhooks in, workers that do the rest, and
``serve --workers N`` running them as one service.

Real processes on one database, driven from outside: the web role must store what it acknowledges
without any worker alive; a worker started later must process it; the periodic duties must have one
holder each among several workers (and move when a holder dies); a supervised service must stop on
SIGTERM with every lease given back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import OWNER_ACCOUNT_ID
from processes import (
    STARTUP_TIMEOUT,
    Admin,
    Child,
    FreshBooksSender,
    accepted,
    children,
    connect_tenant,
    free_port,
    service_command,
    service_env,
    wait_until,
    webhook_ids_by_object,
)
from sqlalchemy import select

from webhook_service.storage.database import Database
from webhook_service.storage.models import Delivery, InboxEvent, Lease

pytestmark = pytest.mark.slow

EVENTS = 40
DUTIES = {"duty:callbacks-sync", "duty:token-refresh", "duty:retention"}  # backfill is off in these tests


def _read(database_url: str, query):
    async def run():
        db = Database(database_url)
        try:
            async with db.sessions() as session:
                return (await session.execute(query)).all()
        finally:
            await db.dispose()

    return asyncio.run(run())


def duty_holders(database_url: str) -> dict[str, str]:
    """Each duty lease's name -> the process part of its owner (``PROCESS.duty-…``)."""
    rows = _read(database_url, select(Lease.name, Lease.owner).where(Lease.name.like("duty:%")))
    return {name: owner.split(".", 1)[0] for name, owner in rows}


def duty_log_lines(child: Child) -> list[str]:
    """The duties this process says it took, in order (its JSON log)."""
    taken = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"duty_taken"' in line:
            taken.append(json.loads(line)["duty"])
    return taken


def test_the_web_role_stores_webhooks_with_no_worker_and_a_later_worker_processes_them(
    database_url, simulator, sink, tmp_path
):
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", EVENTS)]
    port = free_port()
    env = service_env(database_url, simulator, port)
    with children(tmp_path) as processes:
        web = processes.start_service("web", port, env, ["--role", "web"])
        admin = Admin(web.base_url, env["ADMIN_TOKEN"])
        try:
            connect_tenant(simulator, env, tmp_path, admin)  # the handshake is the web role's own work
            admin.subscribe(f"{sink.base_url}/hook")
            statuses = FreshBooksSender(simulator).stream((web.base_url, object_id) for object_id in ids)
            assert accepted(statuses) == {str(i) for i in ids}, statuses

            stored = admin.get("/inbox-events", limit=1000)
            assert sorted(int(e["object_id"]) for e in stored) == sorted(ids)
            assert {e["status"] for e in stored} == {"pending"}, "nothing processes the inbox in the web role"
            assert sink.sink.received == []

            worker = processes.start_service("worker", free_port(), env, ["--role", "worker"])
            sink.sink.wait_until(
                lambda got: len(webhook_ids_by_object(got)) >= EVENTS, 30, f"{EVENTS} events delivered"
            )
            by_object = webhook_ids_by_object(sink.sink.received)
            assert by_object.keys() == {str(i) for i in ids}
            assert {o: w for o, w in by_object.items() if len(w) != 1} == {}, "each event delivered once"
            assert {e["status"] for e in admin.get("/inbox-events", limit=1000)} == {"processed"}

            # the worker answers the probes and /metrics, and nothing else
            assert httpx.get(f"{worker.base_url}/readyz").status_code == 200
            assert httpx.get(f"{worker.base_url}/metrics").status_code == 200
            assert httpx.get(f"{worker.base_url}/admin/v1/tenants").status_code == 404
            assert httpx.post(f"{worker.base_url}{FreshBooksSender(simulator).path}").status_code == 404
        finally:
            admin.close()


def test_two_workers_share_the_duties_with_one_holder_each_and_take_over_a_dead_ones(database_url, simulator, tmp_path):
    env = service_env(database_url, simulator, free_port(), duty_lease_seconds=2, log_level="info")
    with children(tmp_path) as processes:
        first = processes.start_service("worker-1", free_port(), env, ["--role", "worker"])
        second = processes.start_service("worker-2", free_port(), env, ["--role", "worker"])
        holders = wait_until(
            lambda: (found := duty_holders(database_url)).keys() == DUTIES and found, STARTUP_TIMEOUT, "every duty held"
        )
        taken = {"worker-1": duty_log_lines(first), "worker-2": duty_log_lines(second)}
        assert sorted(taken["worker-1"] + taken["worker-2"]) == sorted(d.split(":", 1)[1] for d in DUTIES), (
            "each duty taken once, by one of the two"
        )
        assert len(set(holders.values())) <= 2

        # The holder of the callback sync dies without a word: the other worker takes its duties over.
        victim, survivor = (first, second) if "callbacks-sync" in taken["worker-1"] else (second, first)
        victims_duties = set(duty_log_lines(victim))
        victim.kill9()
        wait_until(
            lambda: victims_duties <= set(duty_log_lines(survivor)), 30, "the survivor to take the dead worker's duties"
        )
        assert set(duty_log_lines(survivor)) == {d.split(":", 1)[1] for d in DUTIES}
        survivor_owner = wait_until(
            lambda: len(set((found := duty_holders(database_url)).values())) == 1 and found, 10, "one holder left"
        )
        assert survivor_owner.keys() == DUTIES


def test_serve_workers_runs_web_and_workers_and_stops_them_on_sigterm_with_no_lease_held(
    database_url, simulator, sink, tmp_path
):
    """Two web processes on the one port (``--web-processes 2``) and two workers."""
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", EVENTS)]
    port = free_port()
    env = service_env(database_url, simulator, port)
    supervisor, log_path = _supervise(env, tmp_path, port, "--workers", "2", "--web-processes", "2")
    admin = Admin(f"http://127.0.0.1:{port}", env["ADMIN_TOKEN"])
    try:
        _wait_ready(supervisor, log_path, port)
        worker_pids = _children_of(supervisor.pid)
        assert len(worker_pids) == 4, "two web processes and two workers"
        answered: set[str] = set()  # request ids are a process's own prefix and a counter

        def both_web_processes_answered() -> bool:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"connection": "close"}, timeout=5)
            answered.add(response.headers["x-request-id"][:12])
            return len(answered) == 2

        wait_until(both_web_processes_answered, STARTUP_TIMEOUT, "both web processes to take connections")
        connect_tenant(simulator, env, tmp_path, admin)
        admin.subscribe(f"{sink.base_url}/hook")
        statuses = FreshBooksSender(simulator).stream((f"http://127.0.0.1:{port}", i) for i in ids)
        assert accepted(statuses) == {str(i) for i in ids}
        sink.sink.wait_until(lambda got: len(webhook_ids_by_object(got)) >= EVENTS, 30, "every event delivered")
        wait_until(lambda: duty_holders(database_url).keys() == DUTIES, STARTUP_TIMEOUT, "every duty held")

        def all_counted() -> bool:  # a worker counts a delivery once its outcome is committed, after the sink has it
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            finished = [line for line in metrics.splitlines() if line.startswith("webhook_service_deliveries_finished")]
            return any(float(line.rsplit(" ", 1)[1]) >= EVENTS for line in finished)

        wait_until(all_counted, 30, "the web process's /metrics to count every delivery the workers made")

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in worker_pids)
    finally:
        admin.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

    assert duty_holders(database_url) == {}, "every duty lease given back"
    assert _read(database_url, select(Lease.name).where(Lease.owner != "probe")) == []
    for model in (InboxEvent, Delivery):
        assert _read(database_url, select(model.id).where(model.lease_owner.is_not(None))) == []
    assert by_status(_read(database_url, select(Delivery.status))) == {"succeeded": EVENTS}


def _supervise(env: dict[str, str], cwd: Path, port: int, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``serve --port PORT ARGS`` started (not waited for), and the file its output goes to."""
    log_path = cwd / "supervisor.log"
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen(
            [*service_command(), "serve", "--port", str(port), *args],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return supervisor, log_path


def _wait_ready(supervisor: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
    """Until a web process on ``port`` answers ``/readyz`` with 200 (the supervisor still running)."""

    def ready() -> bool:
        assert supervisor.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, STARTUP_TIMEOUT, "a web process to be ready", interval=0.1)


def by_status(rows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (status,) in rows:
        counts[status] = counts.get(status, 0) + 1
    return counts


def _children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def _serve_to_its_end(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``serve`` expected to give up at once: its exit status and what it printed."""
    return subprocess.run(
        [*service_command(), "serve", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("processes", [("--workers", "1"), ("--web-processes", "2")])
def test_serve_workers_on_a_port_already_taken_fails_before_any_child_starts(
    database_url, simulator, tmp_path, processes
):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        done = _serve_to_its_end(service_env(database_url, simulator, port), tmp_path, "--port", str(port), *processes)
    finally:
        taken.close()
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "supervisor_started" not in done.stderr and "Traceback" not in done.stderr


def test_serve_workers_with_a_role_is_a_usage_error(database_url, simulator, tmp_path):
    env = service_env(database_url, simulator, free_port())
    done = _serve_to_its_end(env, tmp_path, "--workers", "2", "--role", "worker")
    assert done.returncode == 2
    assert "--workers (SERVE_WORKERS) and --web-processes (SERVE_WEB_PROCESSES) start the web and worker" in done.stderr
    assert "Traceback" not in done.stderr


def test_connections_opened_at_once_are_spread_over_the_web_processes(database_url, simulator, tmp_path):
    """A client that opens its keep-alive connections together (a load generator, a proxy's pool)
    must not find them all in one web process while the other idles."""
    port = free_port()
    env = service_env(database_url, simulator, port)
    supervisor, log_path = _supervise(env, tmp_path, port, "--web-processes", "2")
    try:
        _wait_ready(supervisor, log_path, port)
        # a connection the kernel gives a process still starting waits in its queue until it serves
        connections = [socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT) for _ in range(32)]
        try:
            for connection in connections:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: service\r\n\r\n")
            served: dict[str, int] = {}
            for connection in connections:
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = connection.recv(4096)
                    assert chunk, "the connection closed before its answer"
                    answer += chunk
                head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
                request_id = next(line for line in head.splitlines() if line.startswith("x-request-id:"))
                process = request_id.split(":", 1)[1].strip()[:12]  # a process's own prefix, then a counter
                served[process] = served.get(process, 0) + 1
        finally:
            for connection in connections:
                connection.close()
        assert len(served) == 2 and min(served.values()) >= 4, served
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=60)
