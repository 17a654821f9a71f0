"""The router dashboard in a real browser: headless Chromium driven by Selenium, login required.

Real processes throughout: ``aspia_router`` (``--http ... --http-auth``), ``aspia_relay``, a
``natrelay aspia host`` exposing an echo service and a ``natrelay aspia client`` on stdin/stdout.
The test logs in as the router's administrator, sees the client's live session, presses its
Disconnect button and watches the client process end and the host report the session's end;
then it disconnects the host from its row. A wrong password is refused. Screenshots of every
run go to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.aspia_env import (
    HOST,
    Process,
    add_router_user,
    create_router,
    free_port,
    start_process,
    start_relay,
    tool,
    wait_for,
)
from tests.e2e.test_aspia_peers import HOST_PASSWORD, HOST_USER, EchoServer, start_host, write_secret

pytestmark = pytest.mark.timeout(300)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):  # pragma: no cover
    pytest.skip("Debian chromium and chromium-driver are needed", allow_module_level=True)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.png"))


def log_in(driver: WebDriver, base: str, user: str, password: str) -> None:
    driver.get(base)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "user"))
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()


def test_log_in_watch_a_live_session_and_disconnect_it(tmp_path: Path, browser: WebDriver) -> None:
    http_port = free_port()
    setup = create_router(tmp_path / "router")
    add_router_user(setup, "alice", "alice-pw")
    base = f"http://{HOST}:{http_port}/"
    procs: list[Process] = []
    echo = EchoServer()
    client: subprocess.Popen[bytes] | None = None
    try:
        router = start_process("aspia_router", [*setup.args(), "--http", f"{HOST}:{http_port}",
                                                "--http-auth"], tmp_path / "router.log")
        procs.append(router)
        router.wait_log("Listening on")
        procs.append(start_relay(tmp_path / "relay", setup, {"NATRELAY_ASPIA_RELAY_TIMERS": "reconnect=0.5"}))
        wait_for(lambda: "added 100 keys" in router.log(), 60, "the relay to register")
        host, host_id = start_host(tmp_path, setup, echo.port)
        procs.append(host)

        # A wrong password: refused, logged without a trace, still on the login page.
        log_in(browser, base, "admin", "not-the-password")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error"))
        assert "Wrong user name or password" in browser.find_element(By.ID, "error").text
        assert browser.current_url.endswith("/login")
        router.wait_log("HTTP login refused for user 'admin'")
        assert "Traceback" not in router.log()
        # Not an administrator: refused too.
        log_in(browser, base, "alice", "alice-pw")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error"))

        # A live session, started by a real client on stdin/stdout.
        out_path = tmp_path / "client.out"
        pw = write_secret(tmp_path / "alice.pw", "alice-pw")
        hpw = write_secret(tmp_path / "host.pw", HOST_PASSWORD)
        with open(out_path, "wb") as out, open(tmp_path / "client.log", "wb") as err:
            client = subprocess.Popen(
                [*tool("natrelay"), "aspia", "client", "--router", setup.address(), "--router-key",
                 setup.public_key, "--user", "alice", "--password-file", str(pw), "--host-id", str(host_id),
                 "--host-user", HOST_USER, "--host-password-file", str(hpw), "--timeout", "20"],
                stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert client.stdin is not None
        client.stdin.write(b"hello through the relay\n")
        client.stdin.flush()
        wait_for(lambda: out_path.read_bytes() == b"hello through the relay\n", 60, "the echo")

        log_in(browser, base, "admin", setup.admin_password)
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
        row = browser.find_element(By.CSS_SELECTOR, "#sessions tbody tr")
        assert "alice" in row.text and str(host_id) in row.text
        assert browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
        assert "127.0.0.1" in browser.find_element(By.ID, "relays").text
        shot(browser, "dashboard-live-session")
        browser.set_window_size(412, 915)  # a phone
        shot(browser, "dashboard-phone")
        browser.set_window_size(1280, 900)

        row.find_element(By.CSS_SELECTOR, "button.disconnect").click()
        assert client.wait(60) != 0  # the client ends (TimeoutExpired otherwise), not as a success
        client_log = (tmp_path / "client.log").read_bytes()
        assert b"relayed connection closed" in client_log or b"connection ended" in client_log, client_log
        host.wait_log("session through relay")
        WebDriverWait(browser, 60).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
        router.wait_log("disconnected by admin")

        # The host's own row: its router connection is dropped (it reconnects by itself).
        before = host.log().count("connected to the router")
        browser.find_element(By.CSS_SELECTOR, "#hosts tbody tr button.disconnect").click()
        wait_for(lambda: "lost the router connection" in host.log(), 60, "the host to be disconnected")
        wait_for(lambda: host.log().count("connected to the router") > before, 60, "the host to reconnect")
        shot(browser, "dashboard-after-disconnect")
        assert "Traceback" not in router.log()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        codes = [p.stop() for p in reversed(procs)]  # fails the test if one had to be killed
        echo.shutdown()
        echo.server_close()
    assert codes == [0] * len(codes)


def test_csrf_and_auth_guard_the_api(tmp_path: Path) -> None:
    """Without a login nothing but /healthz answers; Disconnect without the page's token is refused."""
    http_port = free_port()
    setup = create_router(tmp_path / "router", HttpListen=f"{HOST}:{http_port}")
    router = start_process("aspia_router", [*setup.args(), "--http-auth"], tmp_path / "router.log")
    base = f"http://{HOST}:{http_port}/"
    try:
        router.wait_log("HTTP on")
        with urllib.request.urlopen(base + "healthz", timeout=20) as answer:
            assert answer.read() == b"ok\n"
        for path in ("metrics", "status", "api/overview"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=20)
            assert info.value.code == 401
        good = "Basic " + base64.b64encode(f"admin:{setup.admin_password}".encode()).decode()
        bad = "Basic " + base64.b64encode(b"admin:wrong").decode()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(base + "metrics", headers={"Authorization": bad}),
                                   timeout=20)
        assert info.value.code == 401
        with urllib.request.urlopen(urllib.request.Request(base + "metrics", headers={"Authorization": good}),
                                    timeout=20) as answer:
            assert b"natrelay_connections_accepted_total" in answer.read()
        body = json.dumps({"family": "aspia_router", "kind": "host", "id": "1"}).encode()
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            request = urllib.request.Request(base + "api/disconnect", data=body, method="POST", headers={
                "Authorization": good, "Content-Type": "application/json", **headers})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=20)
            assert info.value.code == 403
        assert "Traceback" not in router.log()
    finally:
        assert router.stop() == 0, router.log()
    shutil.rmtree(tmp_path / "router", ignore_errors=True)


def test_strelay_page_shows_its_tunnel_and_disconnects_it(tmp_path: Path, browser: WebDriver) -> None:
    """strelay's own smaller page (no login on loopback): its live tunnel, then Disconnect ends both nodes."""
    from tests.e2e import offset_env

    http_port = free_port()
    relay = offset_env.start_relay(tmp_path / "relay", "--http", f"127.0.0.1:{http_port}")
    peers: list[subprocess.Popen[bytes]] = []
    try:
        offset_env.wait_for(lambda: "HTTP on" in relay.log(), 20, "HTTP to listen")
        a_ident, _ = offset_env.make_identity(tmp_path, "a")
        b_ident, b_key = offset_env.make_identity(tmp_path, "b")
        with open(tmp_path / "b.err", "wb") as err:
            peers.append(offset_env.peer("offset", "listen", "--idfile", str(b_ident), "--relay",
                                         str(relay.ticket), stdin=subprocess.PIPE, stderr=err))
        offset_env.wait_listening(relay, b_key)
        with open(tmp_path / "a.err", "wb") as err:
            peers.append(offset_env.peer("offset", "connect", "--idfile", str(a_ident), "--relay",
                                         str(relay.ticket), "--to", b_key, stdin=subprocess.PIPE, stderr=err))
        browser.get(f"http://127.0.0.1:{http_port}/")
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
        assert "offset" in browser.find_element(By.CSS_SELECTOR, "#sessions tbody tr").text
        assert browser.find_element(By.ID, "relays-section").get_attribute("hidden") is not None
        shot(browser, "strelay-page")
        browser.find_element(By.CSS_SELECTOR, "#sessions tbody tr button.disconnect").click()
        for p in peers:  # both nodes see their tunnel end and exit
            p.wait(60)
        WebDriverWait(browser, 30).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
        assert "disconnected by the operator" in relay.log()
    finally:
        for p in peers:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert relay.stop() == 0, relay.log()


def test_syncthing_relay_page_shows_its_session_and_disconnects_it(tmp_path: Path,
                                                                   browser: WebDriver) -> None:
    """``natrelay syncthing-relay --http``: two devices' live session on the page, then Disconnect
    ends it for both (each session socket reads end of stream)."""
    from natrelay.syncthing import xdr
    from tests.e2e import syncthing_env
    from tests.e2e.syncthing_client import Device, pair

    http_port = free_port()
    relay = syncthing_env.start_relay(tmp_path / "relay", "--http", f"127.0.0.1:{http_port}")
    try:
        a, b = Device(tmp_path, "a", relay.port), Device(tmp_path, "b", relay.port)
        conn, answer = a.join()
        assert answer == xdr.RESPONSE_SUCCESS
        s, c = pair(a, conn, b)
        try:
            s.sendall(b"hello")
            browser.get(f"http://127.0.0.1:{http_port}/")
            WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
            assert "syncthing" in browser.find_element(By.CSS_SELECTOR, "#sessions tbody tr").text
            shot(browser, "syncthing-relay-page")
            browser.find_element(By.CSS_SELECTOR, "#sessions tbody tr button.disconnect").click()
            for side in (s, c):
                side.settimeout(30)
                while side.recv(4096):  # what was relayed before the end, then end of stream
                    pass
            WebDriverWait(browser, 30).until(
                lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
        finally:
            for x in (s, c, conn):
                x.close()
    finally:
        relay.stop()
