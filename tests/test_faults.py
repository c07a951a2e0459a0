"""kill -9 the service mid-stream and mid-delivery: nothing it acknowledged is lost.

The promise under test: an event FreshBooks got a 2xx for was committed, so it reaches the
subscriber even if the process dies the next instant (at least once; a repeat carries the same
``webhook-id``, so the subscriber can drop it). Work a dead process had claimed waits out its lease,
hence the short leases here.
"""

from __future__ import annotations

import pytest
from conftest import OWNER_ACCOUNT_ID
from processes import accepted, changing_ids, deployment, wait_until, webhook_ids_by_object

pytestmark = pytest.mark.slow

#: Short leases so a dead process's claims run out quickly; retries soon, and many of them, so a
#: delivery whose attempt timed out while the subscriber was held is not dead by the end.
FAULT_SETTINGS: dict[str, object] = {
    "processor_lease_seconds": 5,
    "delivery_lease_seconds": 5,
    "delivery_timeout": 2,
    "delivery_poll_interval": 0.2,
    "delivery_retry_schedule": "0,1,1,1,1,1,1,1,1,1,1,1",
    "delivery_retry_jitter": 0,
}
RECOVERY_TIMEOUT = 40.0  # a lease (5 s), a restart and the backlog, with room for a slow machine


@pytest.fixture
def fault_deployment(database_url, simulator, sink, tmp_path):
    with deployment(database_url, simulator, sink, tmp_path, **FAULT_SETTINGS) as running:
        yield running


def test_kill9_during_inbound_stream_loses_no_acknowledged_event(fault_deployment, simulator, sink):
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 120)]
    victim = fault_deployment.first
    kill_after = 40

    def kill_mid_stream(count: int) -> None:
        if count == kill_after:
            victim.kill9()

    statuses = fault_deployment.sender.stream(
        ((fault_deployment.base_url, object_id) for object_id in ids), on_accepted=kill_mid_stream
    )
    acknowledged = accepted(statuses)
    assert victim.popen.returncode == -9
    assert kill_after <= len(acknowledged) < len(ids), "the kill must land mid-stream"

    fault_deployment.restart("service-2")
    received = sink.sink.wait_until(
        lambda got: acknowledged <= webhook_ids_by_object(got).keys(),
        RECOVERY_TIMEOUT,
        f"all {len(acknowledged)} acknowledged events at the sink",
    )
    by_object = webhook_ids_by_object(received)
    missing = acknowledged - by_object.keys()
    assert not missing, f"acknowledged but never delivered: {sorted(missing)}"
    assert changing_ids(by_object) == {}, "a repeat must carry the same webhook-id"


def test_kill9_with_deliveries_in_flight_redelivers_with_the_same_webhook_id(fault_deployment, simulator, sink):
    ids = [obj["id"] for obj in simulator.state.seed(OWNER_ACCOUNT_ID, "invoice", 60)]
    victim = fault_deployment.first
    sink.sink.hold()  # the subscriber takes requests and never answers: attempts stay in flight

    statuses = fault_deployment.sender.stream((fault_deployment.base_url, object_id) for object_id in ids)
    assert accepted(statuses) == {str(i) for i in ids}
    sink.sink.wait_for(8, timeout=30)
    victim.kill9()
    in_flight = webhook_ids_by_object(list(sink.sink.received))  # reached the subscriber, never answered
    sink.sink.release()

    fault_deployment.restart("service-2")
    wait_until(lambda: fault_deployment.admin.all_succeeded(len(ids)), RECOVERY_TIMEOUT, "every delivery to succeed")

    by_object = webhook_ids_by_object(sink.sink.received)
    assert by_object.keys() == {str(i) for i in ids}
    assert changing_ids(by_object) == {}, "a repeat must carry the same webhook-id"
    not_repeated = [o for o in in_flight if len(by_object[o]) <= len(in_flight[o])]
    assert not_repeated == [], "an attempt the dead process never saw answered must be made again"
