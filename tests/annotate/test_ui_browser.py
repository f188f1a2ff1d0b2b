"""UI test: headless Debian chromium (driven by chromedriver over the W3C WebDriver protocol with httpx)
logs into the embedded Argilla, opens a queue and sees its records."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pyarrow as pa
import pytest

from curation.annotate.stage import AnnotateStage
from curation.annotate.config import AnnotateConfig

pytestmark = [pytest.mark.argilla, pytest.mark.browser]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def driver(tmp_path):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    port = _free_port()
    proc = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/status", timeout=1).json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]}}}}
        sid = httpx.post(f"{base}/session", json=caps, timeout=60).json()["value"]["sessionId"]
        yield f"{base}/session/{sid}"
        httpx.delete(f"{base}/session/{sid}", timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _js(session, script, *args):
    r = httpx.post(f"{session}/execute/sync", json={"script": script, "args": list(args)}, timeout=30)
    return r.json()["value"]


def _wait_text(session, needle, timeout=60.0):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _js(session, "return document.body ? document.body.innerText : ''") or ""
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} not on the page within {timeout} s; page text:\n{text[:2000]}")


def _type(session, selector, value):
    el = httpx.post(f"{session}/element", json={"using": "css selector", "value": selector}, timeout=30).json()["value"]
    eid = next(iter(el.values()))
    httpx.post(f"{session}/element/{eid}/value", json={"text": value}, timeout=30)


def test_login_open_queue_see_records(embedded, client, driver):
    emb, info = embedded
    rows = pa.table({"id": ["ui-1", "ui-2"], "text": ["Quarterly invoice for ACME", "Shipping note for Globex"],
                     "q_quality": [0.5, 0.5]})
    AnnotateStage(AnnotateConfig(rules=[{"queue": "ui-queue", "select": "above", "column": "q_quality",
                                         "threshold": 0.1}])).push(rows, client=client)
    ds_id = client.datasets(name="ui-queue", workspace="argilla").id

    httpx.post(f"{driver}/url", json={"url": f"{emb.url}/sign-in"}, timeout=60)
    deadline = time.monotonic() + 60
    while not _js(driver, "return !!document.querySelector('input[type=password]')"):
        assert time.monotonic() < deadline, "no sign-in form"
        time.sleep(0.5)
    _type(driver, "input:not([type=password])", info["username"])
    _type(driver, "input[type=password]", info["password"] + "\n")
    _wait_text(driver, "ui-queue", timeout=60)  # home page lists the queue after login

    httpx.post(f"{driver}/url", json={"url": f"{emb.url}/dataset/{ds_id}/annotation-mode"}, timeout=60)
    text = _wait_text(driver, "of 2", timeout=60)  # the queue's record pager: 1 of 2
    # each annotator gets the records in their own (deterministic) order: either one comes first
    assert "Quarterly invoice for ACME" in text or "Shipping note for Globex" in text
    assert "Keep this row?" in text
