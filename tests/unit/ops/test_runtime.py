"""Argument fix-ups done before argparse sees the command line, and the checks before a server starts."""

from __future__ import annotations

import pytest

from natrelay.engine.busypoll import BUSY_POLL_ENV
from natrelay.ops.runtime import Stop, extract_attached, glue_key_values, run

DASH_KEY = "-" + "A" * 42


def test_key_values_starting_with_a_dash_are_glued() -> None:
    argv = ["offset", "connect", "--to", DASH_KEY, "--allow", DASH_KEY, "--listen", "127.0.0.1:1"]
    assert glue_key_values(argv, ("--to", "--allow")) == [
        "offset", "connect", f"--to={DASH_KEY}", f"--allow={DASH_KEY}", "--listen", "127.0.0.1:1"]


def test_other_arguments_are_left_alone() -> None:
    argv = ["--to", "A" * 43, "--allow", "--allow-any", "--to", "-short", "--idfile", DASH_KEY]
    assert glue_key_values(argv, ("--to", "--allow")) == argv


def test_attached_values_are_split() -> None:
    assert extract_attached(["--laddr1337", "--laddr=1", "--idfile", "x"], ("--laddr",)) == [
        "--laddr", "1337", "--laddr=1", "--idfile", "x"]


def test_a_bad_engine_setting_is_one_line_and_status_2_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(BUSY_POLL_ENV, "fast")
    started: list[bool] = []

    async def main(stop: Stop) -> int:
        started.append(True)
        return 0

    assert run(main) == 2
    assert started == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{BUSY_POLL_ENV}='fast'" in err and "0..10000" in err


def test_a_good_engine_setting_runs_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUSY_POLL_ENV, "0")

    async def main(stop: Stop) -> int:
        return 7

    assert run(main, use_uvloop=False) == 7


def test_a_server_start_tunes_the_allocator_unless_the_operator_did(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[object] = []

    def fake_tune(env: object) -> str:
        seen.append(env)
        return "tuned"

    monkeypatch.setattr("natrelay.ops.runtime.tune_allocator", fake_tune)

    async def main(stop: Stop) -> int:
        return 0

    with caplog.at_level("DEBUG", logger="natrelay.ops.runtime"):
        assert run(main, use_uvloop=False) == 0
    assert len(seen) == 1
    assert "tuned" in caplog.text
