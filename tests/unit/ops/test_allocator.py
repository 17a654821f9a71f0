"""glibc malloc settings at start (ops/allocator.py): applied once, never over the operator's own."""

from __future__ import annotations

import platform

import pytest

from natrelay.ops.allocator import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    OPERATOR_VARIABLES,
    TRIM_THRESHOLD,
    tune_allocator,
)


class FakeMallopt:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_both_thresholds_are_set() -> None:
    fake = FakeMallopt()
    said = tune_allocator({}, fake)
    assert fake.calls == [(M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_THRESHOLD, MMAP_THRESHOLD)]
    assert "16 MiB" in said and "1 MiB" in said


@pytest.mark.parametrize("name", OPERATOR_VARIABLES)
def test_the_operators_own_setting_wins(name: str) -> None:
    fake = FakeMallopt()
    said = tune_allocator({name: "65536"}, fake)
    assert fake.calls == []
    assert name in said


def test_an_empty_variable_is_no_choice() -> None:
    fake = FakeMallopt()
    tune_allocator({"MALLOC_TRIM_THRESHOLD_": ""}, fake)
    assert len(fake.calls) == 2


def test_a_refusal_is_reported() -> None:
    assert "refused" in tune_allocator({}, FakeMallopt(result=0))


def test_without_glibc_nothing_happens() -> None:
    assert "not glibc" in tune_allocator({}, None)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_this_process_glibc_accepts_them() -> None:
    assert tune_allocator({}).startswith("malloc: trim threshold")
