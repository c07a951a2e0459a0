"""What content versions cost per event: the digest beside the stamp-only scheme it replaced, and
beside the whole event build, on the same simulator objects in the same run.

Run from the repository root::

    .venv/bin/python tests/benchmarks/bench_versions.py [--objects N] [--rounds R]

Prints figures, never asserts. Ratios lead: absolute times drift with the machine's load, printed
beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace

from webhook_service.freshbooks.catalogue import CATALOGUE
from webhook_service.normalize.events import build, normalize_object
from webhook_service.normalize.versions import content_version, stamp_version
from webhook_service.sandbox.simulator import SimulatorState

TENANT = SimpleNamespace(id="ten_bench", account_id="ABC123", business_id=439000)
T0 = datetime(2026, 11, 21, tzinfo=UTC)


def _per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """The median over ``rounds`` of the mean time of one call, in microseconds."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500, help="objects per resource (500)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds, median kept (7)")
    args = parser.parse_args()
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; CPUs: {os.cpu_count()}")
    state = SimulatorState(seed=1)
    print("per object: the stamp-only version, the content version, and the whole event build (which includes it)")
    print(f"{'resource':<12} {'stamp-only':>11} {'content':>9} {'build()':>9} {'content/stamp':>14} {'of build':>9}")
    for name in ("invoice", "client", "time_entry", "service"):
        resource = CATALOGUE[name]
        objects = state.seed("ABC123", name, args.objects)
        normalized = [normalize_object(resource, obj) for obj in objects]
        event = {"name": f"{name}.update", "object_id": "1"}

        def old(objs=normalized, r=resource) -> None:
            for obj in objs:
                stamp_version(r, obj)

        def new(objs=normalized, r=resource) -> None:
            for obj in objs:
                content_version(r, obj)

        def whole(objs=objects, r=resource, e=event) -> None:
            for obj in objs:
                build(tenant=TENANT, resource=r, freshbooks_event=e, obj=obj, origin="webhook", fallback_time=T0)

        timed = (("old", old), ("new", new), ("build", whole))
        per = {label: _per_call_us(fn, 1, args.rounds) / args.objects for label, fn in timed}
        print(
            f"{name:<12} {per['old']:>9.2f}us {per['new']:>7.2f}us {per['build']:>7.2f}us"
            f" {per['new'] / per['old']:>13.1f}x {per['new'] / per['build']:>8.0%}"
        )
    state.close()
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
