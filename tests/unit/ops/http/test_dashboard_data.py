"""The dashboard's overview JSON: pages of sessions from every source, router tables, counters."""

from __future__ import annotations

from typing import Any

from natrelay.ops.http.dashboard import MAX_PAGE_SIZE, PAGE_SIZE, login_html, overview, page_html
from natrelay.ops.http.source import Source, Totals


class Many(Source):
    family = "fake"
    title = "Fake relay"

    def __init__(self, n: int) -> None:
        self.n = n

    def totals(self) -> Totals:
        return Totals(2 * self.n, self.n, 0, 12345)

    def sessions(self) -> list[dict[str, Any]]:
        return [{"id": str(i), "a": "10.0.0.1", "b": "10.0.0.2", "bytes_ab": i, "bytes_ba": 0,
                 "duration": 1.0, "idle": 0.0} for i in range(self.n)]


class FakeRouter(Source):
    family = "router"
    title = "Router"
    is_router = True

    def hosts(self) -> list[dict[str, Any]]:
        return [{"id": "7", "host_ids": [1], "address": "10.0.0.3", "since": 0.0, "connected": 5.0}]


def test_a_thousand_sessions_come_a_page_at_a_time() -> None:
    data = overview([Many(1000)], page=20, per_page=PAGE_SIZE)
    assert data["total_sessions"] == 1000 and data["pages"] == 1000 // PAGE_SIZE and data["page"] == 20
    assert [s["id"] for s in data["sessions"]] == [str(i) for i in range(950, 1000)]
    assert overview([Many(1000)], page=99, per_page=PAGE_SIZE)["page"] == 20  # clamped to the last
    assert len(overview([Many(5000)], page=1, per_page=10**9)["sessions"]) == MAX_PAGE_SIZE
    assert overview([Many(0)], page=1, per_page=0)["pages"] == 1


def test_router_tables_and_counters_per_source() -> None:
    data = overview([FakeRouter(), Many(3)], page=1, per_page=PAGE_SIZE)
    assert data["router"] and data["hosts"][0]["family"] == "router"
    assert {s["family"] for s in data["sessions"]} == {"fake"}
    fake = next(c for c in data["counters"] if c["family"] == "fake")
    assert fake["figures"] == {"connections": 6, "sessions": 3, "pending": 0, "bytes": 12345}
    router = next(c for c in data["counters"] if c["family"] == "router")
    assert "bytes" not in router["figures"]


def test_pages_escape_what_they_embed() -> None:
    page = page_html("<b>x</b>", 'tok"en', "<script>")
    assert "<b>x</b>" not in page and "&lt;b&gt;" in page and 'tok&quot;en' in page
    assert "<script>\"" not in page and "&lt;script&gt;" in page
    assert "Wrong &lt;" in login_html("Wrong <")
