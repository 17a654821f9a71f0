"""``aspia_router`` in-process: all-or-nothing --create-config, password files, the status table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from natrelay.cli import aspia_router
from natrelay.cli.aspia_router import format_status, main, read_password


def args_for(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(tmp_path / "etc" / "router.json"), "--data-dir", str(tmp_path / "lib"), *extra]


def test_a_failure_part_way_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_args: object, **_kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aspia_router, "write_file_atomically", broken)
    assert main(args_for(tmp_path, "--create-config")) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "lib" / "router.db3").exists()
    assert not list((tmp_path / "etc").glob("*"))
    monkeypatch.undo()
    assert main(args_for(tmp_path, "--create-config")) == 0  # and a retry works


def test_create_config_prints_a_fresh_password_each_time(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    passwords = []
    for name in ("a", "b"):
        assert main(args_for(tmp_path / name, "--create-config")) == 0
        out = capsys.readouterr().out
        passwords.append(next(line for line in out.splitlines() if "password:" in line).split(":")[1].strip())
    assert passwords[0] != passwords[1] and all(len(p) >= 16 for p in passwords)


def namespace(path: Path | None) -> argparse.Namespace:
    return argparse.Namespace(password_file=path, add_user="bob")


@pytest.mark.parametrize(("content", "expected"), [
    (b"secret\n", "secret"), (b"secret\r\n", "secret"), (b"two words \n", "two words "),
    (b"no newline", "no newline"), ("pässwörd\n".encode(), "pässwörd"),
])
def test_password_file_takes_the_text_without_its_line_end(tmp_path: Path, content: bytes,
                                                           expected: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    assert read_password(namespace(path)) == expected


@pytest.mark.parametrize("content", [b"", b"\n", b"x" * 5000])
def test_empty_or_huge_password_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_password(namespace(path))


def test_status_table_shows_every_figure() -> None:
    status = {
        "relays": [{"id": 1, "address": "127.0.0.1:8070", "pool_size": 97, "sessions": 2, "uptime": 3725},
                   {"id": 3, "address": "", "pool_size": 0, "sessions": None, "uptime": None}],
        "sessions": [{"id": "1.4", "host_id": 12, "client_address": "10.0.0.2", "host_address": "10.0.0.3",
                      "user": "bob", "bytes": 123456, "duration": 61, "idle": 5}],
        "pool_size": 97,
    }
    status["guard"] = {"connections": 5, "pending": 1, "logins": 0, "accepted": 9,
                       "refused": {"rate_per_ip": 3, "logins": 0}}
    table = format_status(status)
    assert "Connections 5 (1 not authenticated, 0 logging in), accepted 9; refused: rate_per_ip 3" in table
    for text in ("127.0.0.1:8070", "97", "1:02:05", "(not announced)", "1.4", "10.0.0.2", "10.0.0.3", "bob",
                 "123456", "0:01:01", "0:00:05", "StatisticsEnabled"):
        assert text in table
