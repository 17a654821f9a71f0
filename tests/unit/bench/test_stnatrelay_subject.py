"""The benchmark's Syncthing-relay subject starts our relay, pairs with the strelaysrv client, stops."""

from __future__ import annotations

from pathlib import Path

from relaybench.natrelay_syncthing import NatrelaySyncthingSubject
from relaybench.subject import open_verified_pair


def test_subject_pairs_and_stops(tmp_path: Path) -> None:
    subject = NatrelaySyncthingSubject()
    assert subject.missing() is None
    subject.start(tmp_path)
    try:
        opener = subject.opener(0)
        try:
            for _ in range(3):
                a, b = open_verified_pair(opener)
                a.close()
                b.close()
            assert opener.retries == 0
        finally:
            opener.close()
        proc = subject._proc
        assert proc is not None
    finally:
        subject.stop()
    assert proc.popen.poll() is not None
