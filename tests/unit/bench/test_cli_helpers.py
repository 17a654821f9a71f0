"""Small parsers of the runner: sizes on the command line, public keys in stmgr output."""

import argparse

import pytest
import run
from relaybench.offset import parse_public_key
from relaybench.subject import SubjectError

KEY = "tuwCaO-h74aHgugOY-Id4MmySAKib2zMCwhvz8_Vu0E"


def test_parse_size_units() -> None:
    assert run.parse_size("64M") == 64 << 20
    assert run.parse_size("2GiB") == 2 << 30
    assert run.parse_size("1000000000") == 1_000_000_000
    assert run.parse_size("1.5K") == 1536
    with pytest.raises(argparse.ArgumentTypeError):
        run.parse_size("0")


def test_unknown_subject_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--subjects", "direct,nosuch"])
    assert "nosuch" in capsys.readouterr().err
    args = run.parse_args(["--quick", "--subjects", "direct"])
    assert args.quick and args.subjects == "direct"


def test_public_key_prefers_the_labelled_line() -> None:
    other = "A" * 43
    assert parse_public_key(f"privateKey: {other}\npublicKey: {KEY}\n") == KEY
    assert parse_public_key(f"{KEY}\n") == KEY
    with pytest.raises(SubjectError):
        parse_public_key("no key here\n")
    with pytest.raises(SubjectError):
        parse_public_key("publicKey: " + "x" * 50)  # too long to be a 32-byte key

