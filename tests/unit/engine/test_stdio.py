"""stdin redirected from a regular file: read in a thread, but never faster than the stream is consumed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import pytest

from natrelay.engine.stdio import CHUNK, open_stdin


def test_file_stdin_is_read_with_flow_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(20 * 1024 * 1024)
    path = tmp_path / "input"
    path.write_bytes(data)

    async def main() -> None:
        with open(path, "rb") as f:
            monkeypatch.setattr(sys, "stdin", f)
            reader = await open_stdin()
            await asyncio.sleep(0.5)  # nobody reads: the feeder must stop at the reader's limit
            consumed = os.lseek(f.fileno(), 0, os.SEEK_CUR)
            assert consumed <= 12 * CHUNK, consumed
            got = hashlib.sha256()
            total = 0
            while chunk := await reader.read(1 << 20):
                got.update(chunk)
                total += len(chunk)
            assert total == len(data) and got.digest() == hashlib.sha256(data).digest()

    asyncio.run(main())
