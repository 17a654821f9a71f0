"""`natrelay service-unit` writes the unit of the installed program and never overwrites silently."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from natrelay.cli.natrelay import main


@pytest.mark.skipif(shutil.which("aspia_relay") is None, reason="needs the installed aspia_relay")
def test_writes_unit_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["service-unit", "relay", "--dir", str(tmp_path)]) == 0
    unit = (tmp_path / "aspia-relay.service").read_text()
    assert f"ExecStart={Path(shutil.which('aspia_relay') or '').resolve()}" in unit
    assert "systemctl enable aspia-relay" in capsys.readouterr().out
    (tmp_path / "aspia-relay.service").write_text("local edit")
    assert main(["service-unit", "relay", "--dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "aspia-relay.service").read_text() == "local edit"
