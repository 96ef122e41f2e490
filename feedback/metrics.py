"""What a service's ``/metrics`` serves: its own registry and the process-wide metrics.

Each app keeps its metrics in a registry of its own (several apps may share a process in tests).
The metrics of what a process has once, whichever app uses it, live on prometheus_client's
default registry: the write-ahead event log's (``flywheel_wal_*``), the audit trail's failures,
and the process's own (``process_resident_memory_bytes``, CPU seconds, open files) and Python's
(garbage collection).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` followed by the process-wide metrics."""
    return generate_latest(registry) + generate_latest(REGISTRY)
