"""Each garbage collection of a service's process is timed, by generation."""

from __future__ import annotations

import gc
import uuid

from prometheus_client import REGISTRY

from shared.metrics import time_collections


def test_a_full_collection_is_timed_under_its_generation() -> None:
    service = f"gc_{uuid.uuid4().hex[:8]}"
    name = f"switchboard_{service}_gc_pause_seconds"
    timer = time_collections(service)
    try:
        gc.collect()
        gc.collect()
    finally:
        gc.callbacks.remove(timer)
    full = REGISTRY.get_sample_value(f"{name}_count", {"generation": "2"})
    assert (full or 0) >= 2
    seconds = REGISTRY.get_sample_value(f"{name}_sum", {"generation": "2"})
    assert (seconds or 0) > 0
