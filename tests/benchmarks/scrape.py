"""The service's ``/metrics``, read with prometheus-client's own parser (the one the tests use):
matching its lines by hand breaks on the escaping, ordering and suffixes the exposition format allows."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(metrics_text: str, name: str) -> list[Sample]:
    """The samples called ``name`` (with its ``_total`` suffix for a counter) in an exposition."""
    return [
        sample
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]
