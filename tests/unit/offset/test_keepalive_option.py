"""``natrelay offset ... --keepalive``: a heartbeat interval the relay's 32 s timeout allows."""

from __future__ import annotations

import pytest

from natrelay.cli.natrelay import main


@pytest.mark.parametrize("value", ["0.5", "17", "40"])
def test_out_of_range_keepalive_is_refused_before_anything_else(value: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["offset", "connect", "--idfile", "/nonexistent", "--relay", "/nonexistent", "--to", "x",
                 "--keepalive", value])
    assert code == 1 and "--keepalive must be 1..16 seconds" in capsys.readouterr().err
