"""Argument fix-ups done before argparse sees the command line."""

from __future__ import annotations

from natrelay.ops.runtime import extract_attached, glue_key_values

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
