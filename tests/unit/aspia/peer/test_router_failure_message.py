"""What a client is told when the router hangs up during the login (issue 8: be honest)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from natrelay.aspia.connection import ChannelClosedError
from natrelay.aspia.peer.router_link import describe_router_failure


def message(bytes_from_router: int, user: str | None) -> str:
    link = cast(Any, SimpleNamespace(bytes_from_router=bytes_from_router))
    return describe_router_failure(link, ChannelClosedError("peer closed the connection"), "r:8060", user)


def test_a_hang_up_after_the_user_name_names_both_possible_causes() -> None:
    text = message(120, "bob")
    # The router refuses logins under load at the user name, exactly where a wrong key shows.
    assert "refusing password logins for now" in text and "--router-key does not match" in text
    assert "either" in text


def test_a_hang_up_before_any_answer_blames_nothing_specific() -> None:
    text = message(0, "bob")
    assert "during authentication" in text and "--router-key" not in text
