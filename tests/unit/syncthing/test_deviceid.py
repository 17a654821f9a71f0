"""Device IDs in Syncthing's text form, against the known IDs of Syncthing's own tests."""

from __future__ import annotations

import pytest

from natrelay.syncthing.deviceid import DeviceIDError, format_device_id, luhn32, parse_device_id

FORMATTED = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"
# Other spellings Syncthing's deviceid_test.go accepts for the same ID.
SPELLINGS = [
    "P56IOI-7MZJNU-2IQGDR-EYDM2M-GTMGL3-BXNPQ6-W5BTBB-Z4TJXZ-WICQ",
    "P56IOI7 MZJNU2I QGDREYD M2MGTMGL 3BXNPQ6W 5BTB BZ4T JXZWICQ",
    "P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ",
    "p56ioi7mzjnu2iqgdreydm2mgtmgl3bxnpq6w5btbbz4tjxzwicq",
    "P56IOI7MZJNU2YIQGDREYDM2MGTIMGL3BXNPQ6W5BMTBBZ4TJXZWICQ2",
    "P561017MZJNU2YIQGDREYDM2MGTIMGL3BXNPQ6W5BMT88Z4TJXZWICQ2",
    "p561017mzjnu2yiqgdreydm2mgtimgl3bxnpq6w5bmt88z4tjxzwicq2",
]


@pytest.mark.parametrize("text", SPELLINGS)
def test_known_id_round_trips(text: str) -> None:
    raw = parse_device_id(text)
    assert len(raw) == 32
    assert format_device_id(raw) == FORMATTED


def test_check_characters_are_verified() -> None:
    wrong = FORMATTED[:-1] + ("A" if FORMATTED[-1] != "A" else "B")
    with pytest.raises(DeviceIDError, match="check character"):
        parse_device_id(wrong)
    with pytest.raises(DeviceIDError):
        parse_device_id("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQCCCC")
    with pytest.raises(DeviceIDError):
        parse_device_id("a")


def test_luhn_groups_of_the_known_id() -> None:
    plain = "P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ"
    assert [luhn32(plain[i:i + 13]) for i in range(0, 52, 13)] == ["Y", "I", "M", "2"]
