"""LoopHistogram (the lock-free per-token histogram) exports exactly what prometheus_client's
Histogram does for the same observations, weighted observations included."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apihelper.service.metrics.prometheus import ITL_BUCKETS, LoopHistogram


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_same_exposition_as_prometheus_client() -> None:
    reference, ours = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("x_seconds", "help", buckets=ITL_BUCKETS, registry=reference)
    loop_histogram = LoopHistogram("x_seconds", "help", ITL_BUCKETS)
    ours.register(loop_histogram)
    rng = random.Random(7)
    for _ in range(2000):
        value = rng.choice([*ITL_BUCKETS, 0.0, 9.0, rng.random() * 0.3])  # bounds exactly, too
        count = rng.randint(1, 4)
        for _ in range(count):
            histogram.observe(value)
        loop_histogram.observe(value, count)
    expected, got = _samples(reference), _samples(ours)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError):
        LoopHistogram("x_seconds", "help", (0.1, 0.05))
