"""The traffic generators move exactly the bytes asked for and report round trips; C and Python agree."""

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relaybench import pyloadgen
from relaybench.loadgen import Generator, LoadgenError, build_c, parse_output


def test_parse_output_takes_the_last_json_line() -> None:
    assert parse_output('warming up\n{"bytes": 5}\n') == {"bytes": 5}
    with pytest.raises(LoadgenError):
        parse_output("")
    with pytest.raises(LoadgenError):
        parse_output("not json\n")
    with pytest.raises(LoadgenError):
        parse_output("[1, 2]\n")


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Generator]:
    gens = {"python": Generator("python")}
    binary = build_c(Path(tmp_path_factory.mktemp("loadgen")))
    if binary is not None:
        gens["c"] = Generator("c", binary)
    return gens


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(3)]
    yield made
    for a, b in made:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["c", "python"])
@pytest.mark.parametrize("mode", ["copy", "splice"])
def test_bulk_moves_every_byte_on_every_session(
    generators: dict[str, Generator], pairs: list[tuple[socket.socket, socket.socket]], kind: str, mode: str
) -> None:
    if kind not in generators:
        pytest.skip("no C compiler")
    if mode == "splice":  # sendfile/splice need TCP, not a Unix socketpair
        pairs = [_tcp_pair() for _ in range(3)]
    nbytes = 3 * 65536 + 123  # not a multiple of the chunk: the last write is short
    r = generators[kind].bulk(pairs, nbytes, 65536, 20, mode)
    assert r.complete
    assert r.bytes == 3 * nbytes
    assert r.raw["min_session_bytes"] == nbytes
    assert r.mib_per_s > 0


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


@pytest.mark.parametrize("kind", ["c", "python"])
def test_bulk_reports_a_session_that_ends_early(generators: dict[str, Generator], kind: str) -> None:
    if kind not in generators:
        pytest.skip("no C compiler")
    w, w_peer = _tcp_pair()
    gone, r = _tcp_pair()
    gone.close()  # r sees end of stream before the 1000 bytes it waits for
    with w, w_peer, r:
        result = generators[kind].bulk([(w, r)], 1000, 512, 10, "copy")
    assert not result.complete
    assert result.raw["eof_early"] == 1
    assert result.bytes == 0


@pytest.mark.parametrize("kind", ["c", "python"])
@pytest.mark.parametrize("mode", ["block", "poll"])
@pytest.mark.parametrize("over", ["socketpair", "tcp"])
def test_pingpong_counts_round_trips(
    generators: dict[str, Generator], kind: str, mode: str, over: str
) -> None:
    if kind not in generators:
        pytest.skip("no C compiler")
    a, b = socket.socketpair() if over == "socketpair" else _tcp_pair()
    with a, b:
        r = generators[kind].pingpong((a, b), 64, 300, 10, mode)
    assert r["mode"] == mode
    assert r["count"] == 300
    assert not r["failed"]
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]


@pytest.mark.parametrize("kind", ["c", "python"])
@pytest.mark.parametrize("mode", ["block", "poll"])
def test_pingpong_gives_up_at_the_time_limit_when_nothing_answers(
    generators: dict[str, Generator], kind: str, mode: str
) -> None:
    """A stuck relay cannot hang the run: A's bytes go to a peer nobody reads, B waits on a silent one."""
    if kind not in generators:
        pytest.skip("no C compiler")
    a, a_peer = socket.socketpair()
    b, b_peer = socket.socketpair()
    with a, a_peer, b, b_peer:
        t = time.monotonic()
        r = generators[kind].pingpong((a, b), 64, 10, 1, mode)
        wall = time.monotonic() - t
    assert r["mode"] == mode
    assert r["count"] == 0
    assert r["failed"]
    # Both modes give up one second after the 1-second limit (blocking: SO_RCVTIMEO of 2 s).
    assert 1.0 <= r["seconds"] < 4.0
    assert wall < 10.0
    # The polling client spins instead of sleeping, so it used CPU for most of its wait; the blocking
    # one slept (startup only). Loose bounds: a busy machine gives the spinner less than a core.
    if mode == "poll":
        assert r["cpu_s"] > 0.3
    else:
        assert r["cpu_s"] < 0.3


def test_pingpong_rejects_an_unknown_mode(generators: dict[str, Generator]) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError):
        generators["python"].pingpong((a, b), 64, 10, 1, "spin")
    assert pyloadgen.main(["pingpong", "64", "10", "1", f"{a.fileno()}:{b.fileno()}", "spin"]) == 2
