"""Reading a server's HTTP surface from tests: scrape ``/metrics`` with prometheus-client's parser."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str, timeout: float = 20) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        data: bytes = answer.read()
        return data


def scrape(base: str) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and label set."""
    text = get(base + "metrics").decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; a missing one fails the test with the names that do exist."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        near = sorted({(n, tuple(sorted(k))) for n, k in samples if n == name})
        raise AssertionError(f"no sample {name}{labels}; there are {near}")
    return samples[key]


def status(base: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(get(base + "status"))
    return result


def overview(base: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(get(base + "api/overview"))
    return result


def count(samples: Samples, name: str, **labels: str) -> float:
    """A counter labelled by reason: absent (nothing counted under that reason yet) means 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)
