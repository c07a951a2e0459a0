"""``serve --workers N [--web-processes M]``: M web processes (one by default) and N worker
processes on this machine, as one service.

A Python process runs on one core; the pipeline's work (hydration, normalization, delivery) is in
the workers, so N workers use N cores while the web process keeps answering webhooks at the speed of
a commit, and M web processes answer M cores' worth. The supervisor only starts, watches and stops
its children: each is an ordinary ``webhook-service serve --role …`` process, configured by the
same environment.

* The supervisor binds the port before any child starts, so a port already taken fails ``serve``
  at once. On Linux each web process gets a listening socket of its own on that port
  (``SO_REUSEPORT``), and the kernel spreads new connections over them by their addresses; one
  socket that all of them serve (as gunicorn's and uvicorn's own workers do, and as the service
  does elsewhere) goes to whichever process wakes first, and a client that opens its keep-alive
  connections at once can find every one of them in the same process: ``bench_scaling``'s 32 did,
  on PostgreSQL, with the other web process idle. (With ``SO_REUSEPORT`` another process of the
  same user that also asks for it could bind the same port; nothing the service runs does.)
* The schema is migrated once, here, before any child starts (children get ``AUTO_MIGRATE=never``).
* SIGTERM or SIGINT (Ctrl-C) stops every child the graceful way (SIGTERM: each finishes or hands
  back its work and gives back its leases), then the supervisor exits 0. A child still running
  after the stop budget is killed.
* A child that exits on its own takes the others down with it, and ``serve`` exits 1: an
  orchestrator (systemd, Docker, Kubernetes) restarts the whole service, which is simpler to reason
  about than a supervisor that restarts children behind its back.
* Metrics: the children share a fresh ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
  multiprocess mode), so the web process's ``/metrics`` counts every process's work.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from webhook_service.cli.common import CommandError
from webhook_service.config import Settings
from webhook_service.core.logs import get_logger

log = get_logger(__name__)

POLL_SECONDS = 0.1
LISTEN_BACKLOG = 2048
"""uvicorn's own default: connections the kernel queues for the web processes to accept."""
STOP_MARGIN = 10.0
"""Seconds a child gets beyond its own grace and drain before it is killed."""


def child_command() -> list[str]:
    return [sys.executable, "-m", "webhook_service", "serve"]


def run(settings: Settings, *, host: str, port: int, web: int, workers: int, stop_budget: float) -> int:
    """Bind the port, start the children, wait for a signal or a death, stop them all; the exit status."""
    try:
        listeners = _listen(host, port, web)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    metrics_dir = tempfile.mkdtemp(prefix="webhook-service-metrics-")
    env = {**os.environ, "AUTO_MIGRATE": "never", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for number in range(1, web + 1):
            fd = listeners[(number - 1) % len(listeners)].fileno()
            argv = [*child_command(), "--role", "web", "--listen-fd", str(fd)]
            children.append((f"web-{number}" if web > 1 else "web", subprocess.Popen(argv, env=env, pass_fds=(fd,))))
        for listener in listeners:
            listener.close()  # the web processes hold them now: a dead one takes none of the port with it
        for number in range(1, workers + 1):
            argv = [*child_command(), "--role", "worker", "--no-listen"]
            children.append((f"worker-{number}", subprocess.Popen(argv, env=env)))
        log.info(
            "supervisor_started",
            listening=f"{host}:{port}",
            web_pids=[p.pid for _, p in children[:web]],
            worker_pids=[p.pid for _, p in children[web:]],
        )
        if not workers:
            log.warning(  # a web-only service on this machine: the inbox fills, nothing here drains it
                "supervisor_without_workers",
                detail="webhooks are stored, not processed here: run `serve --role worker` elsewhere, or --workers N",
            )
        failed = _watch(children, stopping)
        _stop(children, stop_budget)
        return 1 if failed else 0
    finally:
        for listener in listeners:
            listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(children, stop_budget)  # an exception above must not leave children behind
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _listen(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on the port where the kernel balances connections across them
    (see the module docstring), else one that all share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if count == 1 or sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT"):
        return [socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)]
    first = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG, reuse_port=True)
    listeners = [first]
    try:
        bound = first.getsockname()[1]  # the port chosen, if 0 asked for any
        for _ in range(count - 1):
            listeners.append(
                socket.create_server((host, bound), family=family, backlog=LISTEN_BACKLOG, reuse_port=True)
            )
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _watch(children: list[tuple[str, subprocess.Popen[bytes]]], stopping: list[int]) -> bool:
    """Until a signal (False) or a child's exit (True)."""
    while not stopping:
        for name, child in children:
            code = child.poll()
            if code is not None:
                log.error("supervisor_child_exited", child=name, pid=child.pid, exit_code=code)
                return True
        time.sleep(POLL_SECONDS)
    log.info("supervisor_stopping", signal=signal.Signals(stopping[0]).name)
    return False


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]], budget: float) -> None:
    """SIGTERM to every child still running, wait for all within ``budget``, kill the rest."""
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + budget
    for name, child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("supervisor_child_killed", child=name, pid=child.pid)
            child.kill()
            child.wait()
