"""Every HMI page in a real browser on a station rendering its own frames (station/cameras/synthetic.py:
never the casting images, so the screenshots may be committed), with a real alarm raised (the stack
light's PLC is down), saved as PNGs. They go to pytest's temporary folder; to refresh the ones in the
documentation: `HMI_SCREENSHOTS_DIR=docs/images python -m pytest tests/hmi/test_hmi_screenshots.py`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hmi_support import HmiProcess, add_user, chromium, free_port, login, require_browser
from support import REPO

from station.app import Station
from station.configfile import load_config

pytestmark = pytest.mark.slow

PASSWORD = "screenshot-pass"


def test_every_page_renders_and_is_photographed(tmp_path, sim_plc):
    require_browser()
    out = Path(os.environ.get("HMI_SCREENSHOTS_DIR", tmp_path / "shots"))
    out.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "station.yaml"
    config.write_text(f"""station: {{id: line-3-impellers}}
line: {{max_parts_per_s: 5}}
camera: {{kind: synthetic, rate_parts_per_s: 3, size_px: 300, defect_ratio: 0.35, broken_ratio: 0.05, seed: 4}}
model: {{path: {REPO / 'models' / 'impeller-resnet18.pt'}, device: cpu, backend: torch, threads: 1, warmup_runs: 1}}
decision: {{threshold: 0.2, deadline_ms: 400}}   # low: rendered frames score low
reject:
  delay_ms: 600
  pulse_ms: 50
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {sim_plc.port}, coil: 0}}
alarm:
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {free_port()}, coil: 1, reconnect_max_ms: 1000}}
tracelog: {{dir: log, images: all}}
hmi: {{control_socket: ctl.sock, state_dir: hmi, users_file: users.json}}
""", encoding="utf-8")
    assert add_user(config, "maria", "admin", PASSWORD).returncode == 0
    station = Station(load_config(config))
    station.start()
    hmi = HmiProcess(config, port=free_port(), cwd=tmp_path)
    try:
        hmi.wait_ready()
        base = hmi.base
        time.sleep(8)  # two dozen parts, some rejects and fail-safes
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1366, "height": 860})
            page.goto(base + "/live")
            page.wait_for_selector("#part-image")
            assert "Alarm lamp unreachable" in page.inner_text("#alarms-slot")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "hmi-live.png"))
            page.goto(base + "/login")
            page.screenshot(path=str(out / "hmi-login.png"))
            login(page, base, "maria", PASSWORD, then="/review")
            first = page.locator("article.review-item").first
            first.locator("input[name=note]").fill("blow holes on the rim")
            first.locator("button[value=true_defect]").click()
            page.goto(base + "/review?show=all")
            # Heat maps are computed on first view: wait until every image has arrived.
            # (Polled with evaluate: wait_for_function would eval a string, which the HMI's CSP forbids.)
            for _ in range(300):
                if page.evaluate("Array.from(document.images).every(i => i.complete)"):
                    break
                page.wait_for_timeout(200)
            assert "Reviewed: True defect by maria" in page.inner_text("main")
            page.screenshot(path=str(out / "hmi-review.png"))
            page.goto(base + "/search?decision=reject")
            assert "part(s)" in page.inner_text("#result-count")
            page.screenshot(path=str(out / "hmi-search.png"))
            page.goto(base + "/trends?hours=8")
            for chart in ("#chart-yield svg", "#chart-failsafe svg", "#chart-pdefect svg", "#chart-latency svg"):
                assert page.locator(chart).count() == 1, chart
            page.screenshot(path=str(out / "hmi-trends.png"), full_page=True)
            page.goto(base + "/settings")
            page.fill("input[name='decision.threshold']", "0.6")
            page.click("#settings-form button[type=submit]")
            assert "decision.threshold: 0.2 -> 0.6" in page.inner_text("#settings-message")
            page.screenshot(path=str(out / "hmi-settings.png"), full_page=True)
            page.goto(base + "/live")
            page.locator("#alarms form button").first.click()
            page.wait_for_selector("#alarms .ack")
            assert "acknowledged by maria" in page.inner_text("#alarms-slot")
            page.goto(base + "/users")
            page.screenshot(path=str(out / "hmi-users.png"))
        for name in ("live", "login", "review", "search", "trends", "settings", "users"):
            assert (out / f"hmi-{name}.png").stat().st_size > 10_000, name
    finally:
        hmi.stop()
        station.stop()
