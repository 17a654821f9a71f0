"""Aspia JSON settings: what is read, what is rejected, and the exact bytes written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.ops.jsonsettings import (
    MAX_SETTINGS_FILE_SIZE,
    JsonSettingsError,
    format_settings,
    parse_settings,
    read_settings,
    update_settings,
    write_file_atomically,
    write_settings,
)

# relay.json exactly as the original's --create-config writes it (spec section 7.7).
SPEC_RELAY_JSON = b"""{
    "MaxPeerCount": "100",
    "PeerAddress": "",
    "PeerIdleTimeout": "5",
    "PeerPort": "8070",
    "RouterAddress": "127.0.0.1",
    "RouterPort": "8060",
    "RouterPublicKey": "",
    "StatisticsEnabled": "false",
    "StatisticsInterval": "5"
}"""


def test_strings_are_trimmed_of_ascii_whitespace_only() -> None:
    doc = parse_settings(b'{"A": "  x y \\t\\n", "B": "\\u00a0z"}')
    assert doc.values == {"A": "x y", "B": "\u00a0z"}
    assert doc.rejected == {}


def test_numbers_and_booleans_become_the_text_aspia_stores() -> None:
    doc = parse_settings(b'{"Port": 8060, "Neg": -3, "On": true, "Off": false}')
    assert doc.values == {"Port": "8060", "Neg": "-3", "On": "true", "Off": "false"}


@pytest.mark.parametrize(
    ("value", "reason_word"),
    [
        ("null", "null"),
        ("[1, 2]", "array"),
        ("1.5", "fraction"),
        ("1e3", "fraction"),
        ("9223372036854775808", "64-bit"),
    ],
)
def test_values_aspia_ignores_are_reported_not_dropped(value: str, reason_word: str) -> None:
    doc = parse_settings(f'{{"Key": {value}, "Other": "1"}}'.encode())
    assert doc.values == {"Other": "1"}
    assert reason_word in doc.rejected["Key"]


def test_int64_limits_are_accepted() -> None:
    doc = parse_settings(b'{"A": 9223372036854775807, "B": -9223372036854775808}')
    assert doc.values == {"A": "9223372036854775807", "B": "-9223372036854775808"}


def test_nested_objects_flatten_to_slash_keys() -> None:
    doc = parse_settings(b'{"Group": {"Sub": {"Key": "v"}, "N": 2}, "Top": "t"}')
    assert doc.values == {"Group/Sub/Key": "v", "Group/N": "2", "Top": "t"}


def test_duplicate_keys_are_rejected_instead_of_last_one_winning() -> None:
    doc = parse_settings(b'{"Port": "1", "Port": "2", "X": "3"}')
    assert "Port" not in doc.values
    assert "more than once" in doc.rejected["Port"]
    assert doc.values == {"X": "3"}


def test_flattened_key_colliding_with_literal_slash_key_is_a_duplicate() -> None:
    doc = parse_settings(b'{"a/b": "1", "a": {"b": "2"}}')
    assert "a/b" in doc.rejected and doc.values == {}


def test_lone_surrogate_escapes_are_rejected() -> None:
    doc = parse_settings(b'{"A": "\\ud800", "\\udc00k": "v", "B": "ok"}')
    assert doc.values == {"B": "ok"}
    assert "surrogate" in doc.rejected["A"]
    assert any("surrogate" in reason for key, reason in doc.rejected.items() if key != "A")


def test_byte_order_mark_is_accepted() -> None:
    assert parse_settings(b'\xef\xbb\xbf{"A": "1"}').values == {"A": "1"}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not valid JSON"),
        (b'{"A": "1",}', "line 1"),
        (b'["A"]', "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"A": NaN}', "NaN"),
        (b'{"A": Infinity}', "Infinity"),
        (b'{"A": "\xff"}', "UTF-8"),
        (b'{"A": ' + b"1" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_unusable_documents_raise_only_the_settings_error(data: bytes, needle: str) -> None:
    with pytest.raises(JsonSettingsError) as info:
        parse_settings(data, source="/x/relay.json")
    assert needle in str(info.value)
    assert str(info.value).startswith("/x/relay.json: ")


def test_oversized_document_is_refused_before_parsing() -> None:
    data = b'{"A": "' + b"x" * MAX_SETTINGS_FILE_SIZE + b'"}'
    with pytest.raises(JsonSettingsError, match="larger than"):
        parse_settings(data)


def test_read_refuses_oversized_file_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as fh:  # sparse: the size alone must be enough to refuse it
        fh.truncate(MAX_SETTINGS_FILE_SIZE + 1)
    with pytest.raises(JsonSettingsError, match="larger than"):
        read_settings(path)


def test_read_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "aspia" / "relay.json"
    with pytest.raises(FileNotFoundError):
        read_settings(path)
    assert list(tmp_path.iterdir()) == []


def test_read_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    os.mkfifo(path)
    with pytest.raises(JsonSettingsError, match="regular file"):
        read_settings(path)


def test_read_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_bytes(SPEC_RELAY_JSON)
    doc = read_settings(path)
    assert doc.source == str(path)
    assert doc.values["RouterAddress"] == "127.0.0.1"
    assert doc.values["StatisticsEnabled"] == "false"
    assert len(doc.values) == 9


def test_format_is_byte_identical_to_the_original() -> None:
    values = json.loads(SPEC_RELAY_JSON)
    shuffled = dict(reversed(list(values.items())))
    assert format_settings(shuffled) == SPEC_RELAY_JSON


def test_keys_sort_by_utf8_byte_order_and_text_stays_unescaped() -> None:
    out = format_settings({"b": "é", "B": "1", "é": "2", "a": "3"})
    assert list(json.loads(out)) == ["B", "a", "b", "é"]
    assert "é".encode() in out and not out.endswith(b"\n")


def test_slash_keys_are_written_as_nested_objects() -> None:
    out = format_settings({"G/K": "1", "G/A": "2", "T": "3"})
    assert json.loads(out) == {"G": {"A": "2", "K": "1"}, "T": "3"}
    assert parse_settings(out).values == {"G/K": "1", "G/A": "2", "T": "3"}


def test_format_refuses_a_key_that_is_also_a_group() -> None:
    with pytest.raises(ValueError, match="conflicts"):
        format_settings({"G": "1", "G/K": "2"})


def test_write_creates_parent_directories_and_skips_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "router.json"
    assert write_settings(path, {"Port": "8060"}) is True
    assert path.read_bytes() == b'{\n    "Port": "8060"\n}'
    os.utime(path, (1_000_000, 1_000_000))
    assert write_settings(path, {"Port": "8060"}) is False
    assert path.stat().st_mtime == 1_000_000
    assert write_settings(path, {"Port": "8061"}) is True
    assert json.loads(path.read_bytes()) == {"Port": "8061"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["router.json"]


def test_overwrite_keeps_the_existing_permission_bits(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    write_settings(path, {"A": "1"}, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_settings(path, {"A": "2"}, mode=0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exclusive_write_never_replaces_anything(tmp_path: Path) -> None:
    path = tmp_path / "relay.json"
    path.write_bytes(b"operator's file")
    with pytest.raises(FileExistsError):
        write_settings(path, {"A": "1"}, exclusive=True)
    assert path.read_bytes() == b"operator's file"
    dangling = tmp_path / "link.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(FileExistsError):
        write_file_atomically(dangling, b"{}", exclusive=True)
    assert not (tmp_path / "nowhere.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "relay.json"]


def test_exclusive_write_sets_mode(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    write_file_atomically(path, b"{}", exclusive=True, mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes() == b"{}"


def test_update_keeps_keys_it_does_not_change(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_bytes(b'{"Port": 8060, "Custom": "keep me", "SeedKey": ""}')
    assert update_settings(path, {"SeedKey": "AB"}) is True
    assert json.loads(path.read_bytes()) == {"Custom": "keep me", "Port": "8060", "SeedKey": "AB"}
    assert update_settings(path, {"SeedKey": "AB"}) is False


_KEY = st.text(st.characters(exclude_characters="/", exclude_categories=["Cs"]), min_size=1, max_size=12)
_VALUE = st.text(st.characters(exclude_categories=["Cs"]), max_size=20).map(lambda s: s.strip(" \t\n\r\f\v"))


@given(st.dictionaries(_KEY, _VALUE, max_size=8))
def test_written_settings_read_back_unchanged(values: dict[str, str]) -> None:
    assert parse_settings(format_settings(values)).values == values


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_the_settings_error(data: bytes) -> None:
    try:
        doc = parse_settings(data)
    except JsonSettingsError:
        return
    assert all(isinstance(v, str) for v in doc.values.values())


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=6), _JSON, max_size=5))
def test_every_key_is_either_a_value_or_a_named_rejection(obj: dict[str, object]) -> None:
    doc = parse_settings(json.dumps(obj).encode())
    for key, value in obj.items():
        if isinstance(value, dict):
            continue
        assert (key in doc.values) != (key in doc.rejected)
