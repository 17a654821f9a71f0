"""Every coverage-guided fuzz target of ``fuzz/`` runs briefly, so CI keeps them working.

Each target runs ~1 s in its own process under atheris (or the random engine when atheris is not
installed) with a fresh corpus; any finding fails the test with the fuzzer's report. The
in-process tests check that the targets reach what they claim to fuzz: seeds run clean, the
handshake states accept their valid next message, sealed plaintext passes the AEAD check.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fuzz.harness import Input, chunked, lengthed
from fuzz.run import atheris_available, run_target
from fuzz.targets import TARGETS

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_briefly_without_a_finding(name: str, tmp_path: Path) -> None:
    engine = "atheris" if atheris_available() else "random"
    result = run_target(name, 1, engine=engine, corpus_root=tmp_path / "corpus",
                        artifact_root=tmp_path / "artifacts", log=tmp_path / "log.txt")
    assert result.ok, result.detail
    assert result.executed > 0
    assert not any((tmp_path / "artifacts").rglob("crash-*"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_run_clean(name: str) -> None:
    target = TARGETS[name]
    seeds = list(target.seeds())
    assert seeds, f"{name} has no seeds"
    for seed in seeds:
        target.run(seed)


def test_handshake_states_accept_their_valid_next_message() -> None:
    from fuzz.aspia_targets import check_handshake_states

    check_handshake_states()


def test_sealed_plaintext_passes_the_aead_check() -> None:
    from fuzz.offset_targets import check_plaintext_reaches_the_parsers

    check_plaintext_reaches_the_parsers()


def test_input_reader_is_total_and_inverts_the_seed_helpers() -> None:
    inp = Input(b"")
    assert (inp.byte(), inp.below(1000), inp.take(), inp.chunks(), inp.rest()) == (0, 0, b"", [], b"")
    inp = Input(chunked(b"ab", b"") + lengthed(b"xyz"))
    assert inp.chunks() == [b"ab", b""] and inp.take() == b"xyz" and inp.empty


def test_a_finding_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner must report a crash, not swallow it: a target that raises on any input."""
    import fuzz.targets as registry
    from fuzz.harness import Target

    def broken(data: bytes) -> None:
        raise IndexError("found")

    monkeypatch.setitem(registry.TARGETS, "broken", Target("broken", broken, lambda: [b"x"]))
    from fuzz.run import worker_random

    try:
        with pytest.raises(SystemExit) as info:
            worker_random("broken", 1.0, tmp_path / "c", tmp_path / "a", timeout=5)
    finally:
        logging.disable(logging.NOTSET)  # the worker silences logging for its own process
    assert info.value.code == 1
    assert list((tmp_path / "a").glob("crash-*"))
