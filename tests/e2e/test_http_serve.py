"""``natrelay serve`` with HTTP: the printed URL serves every server, logins are the router's admins."""

from __future__ import annotations

import base64
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.aspia_env import aspia_env, free_port, parse_admin_password, tool, wait_for

pytestmark = pytest.mark.timeout(120)


def test_serve_prints_the_url_and_serves_every_family(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(5)]
    out = tmp_path / "serve.out"
    with open(out, "wb") as log:
        serve = subprocess.Popen(
            [*tool("natrelay"), "serve", "--data-dir", str(tmp_path / "data"), "--offset-port", str(ports[0]),
             "--router-port", str(ports[1]), "--relay-port", str(ports[2]), "--http", f"127.0.0.1:{ports[3]}",
             "--syncthing-port", str(ports[4]), "--http-auth"],
            stdout=log, stderr=subprocess.STDOUT, env=aspia_env())
    try:
        wait_for(lambda: b"Stop with Ctrl-C." in out.read_bytes(), 60, "serve to start")
        text = out.read_text()
        url = f"http://127.0.0.1:{ports[3]}/"
        assert f"Dashboard, metrics and status: {url}" in text
        password = parse_admin_password(text)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + "metrics", timeout=20)
        assert info.value.code == 401
        auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}

        def families() -> set[str]:
            with urllib.request.urlopen(urllib.request.Request(url + "metrics", headers=auth),
                                        timeout=20) as answer:
                body = answer.read().decode()
            return {line.split('family="')[1].split('"')[0] for line in body.splitlines()
                    if line.startswith("natrelay_sessions_active{")}

        wait_for(lambda: families() == {"offset", "aspia_router", "aspia_relay", "syncthing"}, 30,
                 "every server")
    finally:
        serve.terminate()
        code = serve.wait(30)
    assert code == 0, out.read_text()
