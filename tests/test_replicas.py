"""Two service processes on one database share the work without doing any of it twice.

Replicas claim inbox events and deliveries with leases in the database, and refresh a tenant's
single-use FreshBooks token under a lease on the tenant row. If either went wrong, a subscriber
would get an event twice, or FreshBooks would see two refreshes of one token (the second one
``invalid_grant``, and the tenant lost).
"""

from __future__ import annotations

import pytest
from conftest import OWNER_ACCOUNT_ID, refresh_requests
from processes import accepted, deployment, free_port, wait_until, webhook_ids_by_object

pytestmark = pytest.mark.slow

EVENTS = 200
ROUNDS = 3  # the access token is expired at FreshBooks before every round but the first
ARRIVAL_TIMEOUT = 30.0


def test_two_replicas_deliver_each_event_once_and_refresh_once_per_expiry(database_url, simulator, sink, tmp_path):
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", EVENTS)]
    with deployment(database_url, simulator, sink, tmp_path, delivery_poll_interval=0.2) as running:
        second = running.processes.start_service("service-2", free_port(), running.env)
        simulator.state.reset_logs()

        sent = 0
        for round_number in range(ROUNDS):
            if round_number:  # FreshBooks now answers 401 to the token both replicas hold
                simulator.state.expire_access_tokens()
            chunk = ids[round_number * EVENTS // ROUNDS : (round_number + 1) * EVENTS // ROUNDS]
            by_freshbooks, by_us = chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]
            for object_id in by_freshbooks:  # the simulator posts these to the callback URI: replica 1
                simulator.state.update_object(
                    OWNER_ACCOUNT_ID, "invoice", object_id, {"notes": f"round {round_number}"}
                )
            statuses = running.sender.stream((second.base_url, object_id) for object_id in by_us)
            assert accepted(statuses) == {str(i) for i in by_us}, statuses
            sent += len(chunk)
            sink.sink.wait_until(
                lambda got, n=sent: len(webhook_ids_by_object(got)) >= n, ARRIVAL_TIMEOUT, f"{sent} events delivered"
            )

        deliveries = wait_until(
            lambda: running.admin.all_succeeded(EVENTS), ARRIVAL_TIMEOUT, "every delivery to succeed"
        )

    freshbooks_failures = [d for d in simulator.state.delivery_log() if not 200 <= (d["status"] or 0) < 300]
    assert freshbooks_failures == []
    by_object = webhook_ids_by_object(sink.sink.received)
    assert by_object.keys() == {str(i) for i in ids}
    assert {o: w for o, w in by_object.items() if len(w) != 1} == {}, "each event delivered once"
    assert [d for d in deliveries if d["attempts"] != 1] == [], "no attempt sent twice"

    refreshes = refresh_requests(simulator.state)
    assert [(r["status"], r["error"]) for r in refreshes] == [(200, None)] * (ROUNDS - 1), "one refresh per expiry"
