"""The README's first command, end to end, as a new user runs it, and looked at in a real browser.

`statecast demo` is started as a subprocess on free ports with its own STATECAST_HOME (a short
training and a 200-observation replay, so the test stays bounded); once the replay is forecast:
the REST forecast is fetched, headless Chromium (Debian's chromium + chromedriver, through
Selenium) finds the demo run in the MLflow UI with its metrics and its plot, and renders the REST
API's /docs page; screenshots and the demo's output go to docs/demo/. Then Ctrl-C (SIGINT) must
stop everything the demo started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import KAFKA_SH, ROOT, free_port

SHOTS = ROOT / "docs" / "demo"
pytestmark = pytest.mark.timeout(1200)


def _browser() -> webdriver.Chrome:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "Debian's chromium and chromium-driver are needed (scripts/setup.sh)"
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _body_has(d: webdriver.Chrome, *texts: str, timeout: float = 60) -> str:
    def ready(drv: webdriver.Chrome) -> str | bool:
        body = drv.find_element(By.TAG_NAME, "body").text
        return body if all(t in body for t in texts) else False

    try:
        return str(WebDriverWait(d, timeout, poll_frequency=1).until(ready))
    except Exception as e:
        body = d.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"page {d.current_url} lacks {texts}; it shows:\n{body[:2000]}") from e


def test_demo_streams_and_the_ui_shows_it(tmp_path: Path) -> None:
    kafka, rest, ui = free_port(), free_port(), free_port()
    env = {**os.environ, "STATECAST_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "statecast", "demo", "--epochs", "1", "--steps-per-epoch", "20",
        "--d-model", "16", "--replay-limit", "200", "--rate", "50", "--kafka-port", str(kafka),
        "--rest-port", str(rest), "--ui-port", str(ui), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    replayed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "live forecasts plot:" in line:
                replayed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 900
        while not replayed.wait(2):
            assert proc.poll() is None, "the demo exited:\n" + "".join(lines[-60:])
            assert time.monotonic() < deadline, "no live forecasts:\n" + "".join(lines[-60:])
        out = "".join(lines)
        assert "200 forecasts received, one per observation" in out, out[-3000:]
        png = tmp_path / "home" / "demo" / "live_forecasts.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(png, SHOTS / "live_forecasts.png")

        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v1/series/ETTh1/forecast") as r:
            doc = json.load(r)
        assert doc["series"] == "ETTh1" and len(doc["point"]) == 24 and len(doc["point"][0]) == 7

        import mlflow

        client = mlflow.MlflowClient(f"http://127.0.0.1:{ui}")  # the UI server's own API
        exp = client.get_experiment_by_name("statecast-demo")
        assert exp is not None
        (run,) = client.search_runs([exp.experiment_id])
        page = f"http://127.0.0.1:{ui}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
        d = _browser()
        try:
            d.get(page)
            _body_has(d, run.info.run_name, "train_loss", "val_mse", "test_mse")
            d.save_screenshot(str(SHOTS / "mlflow-run.png"))
            d.get(page + "/artifacts/plots/forecast_test.png")
            _body_has(d, "forecast_test.png")
            WebDriverWait(d, 60, poll_frequency=1).until(
                lambda drv: any(
                    drv.execute_script("return arguments[0].naturalWidth", img) > 300
                    for img in drv.find_elements(By.TAG_NAME, "img")
                    if (img.get_attribute("src") or "").startswith("blob:")
                )
            )
            d.save_screenshot(str(SHOTS / "mlflow-plot.png"))
            d.get(f"http://127.0.0.1:{rest}/docs")
            _body_has(d, "/v1/series/{series_id}/forecast", "/v1/forecast", "/healthz")
            d.save_screenshot(str(SHOTS / "rest-docs.png"))
        finally:
            d.quit()

        started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert started, "the demo runs its services as child processes"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(180) == 0, "".join(lines[-40:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    out = "".join(lines)
    (SHOTS / "output.txt").write_text(out)
    assert "stopped everything it started" in out
    time.sleep(2)
    left = [
        pid
        for pid in started
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not left, f"still running after Ctrl-C: {[psutil.Process(p).cmdline() for p in left]}"
    assert not any(_port_open(p) for p in (kafka, rest, ui)), "a port is still served"
    status = subprocess.run(
        [str(KAFKA_SH), "status"],
        env={**os.environ, "KAFKA_PORT": str(kafka), "KAFKA_DIR": str(tmp_path / "home" / "kafka")},
    )
    assert status.returncode != 0, "the demo's broker is still running"
