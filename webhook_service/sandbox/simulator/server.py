"""Run the simulator with uvicorn: in a background thread for tests, or in
the foreground for operators (``webhook-service simulator --port N``).

The listening socket is bound (and ``listen()``-ing) before uvicorn starts,
so the port is known at once and early connections queue in the backlog
instead of being refused: no polling or sleeping for startup.
"""

from __future__ import annotations

from urllib.parse import urlencode

import uvicorn

from webhook_service.sandbox.serving import BackgroundServer, bind_socket, url_host

from .app import create_app
from .state import SimulatorState


def _config(state: SimulatorState, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )


class SimulatorServer(BackgroundServer):
    """A running simulator on a background daemon thread.

    ``with SimulatorServer() as sim: httpx.get(sim.base_url + ...)``; ``async with`` works too.
    """

    def __init__(self, state: SimulatorState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state if state is not None else SimulatorState()
        super().__init__(create_app(self.state), host, port)

    def stop(self) -> None:
        """Stop serving, then stop the webhook delivery thread (queued deliveries are discarded)."""
        try:
            super().stop()
        finally:
            self.state.close()


def run(host: str, port: int, seed_invoices: int = 0, seed_clients: int = 0, delivery_senders: int = 1) -> None:
    """Serve in the foreground until interrupted, after printing what an operator needs."""
    state = SimulatorState(delivery_senders=delivery_senders)
    if seed_clients:
        state.seed("ABC123", "client", seed_clients)
    if seed_invoices:
        state.seed("ABC123", "invoice", seed_invoices)
    sock = bind_socket(host, port)
    actual_port = sock.getsockname()[1]
    base_url = f"http://{url_host(host)}:{actual_port}"
    authorize = (
        base_url
        + "/oauth/authorize?"
        + urlencode(
            {"response_type": "code", "client_id": state.client_id, "redirect_uri": "https://localhost/callback"}
        )
    )
    print(f"FreshBooks simulator listening on {base_url}", flush=True)
    print(f"  auth base / API base: {base_url}")
    print(f"  client_id:            {state.client_id}")
    print(f"  client_secret:        {state.client_secret}")
    print(f"  refresh_token:        {state.issue_refresh_token()}  (identity {state.default_identity_id}, single-use)")
    print("  businesses:           439000/ABC123 (owner), 439001/XYZ789 (manager), 439002 (client, no account_id)")
    print(f"  seeded in ABC123:     {seed_clients} clients, {seed_invoices} invoices")
    print(f"  authorize example:    {authorize}")
    print(f"  more refresh tokens:  curl -X POST {base_url}/_sim/refresh-tokens", flush=True)
    try:
        uvicorn.Server(_config(state, host, actual_port)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        print("simulator stopped", flush=True)
    finally:
        sock.close()
        state.close()
