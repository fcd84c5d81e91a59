"""The operator HMI end to end, in a real browser, against a real station.

A station replays casting test images (read from the shared dataset, copied into pytest's temporary
folder only: nothing here is committed) into pymodbus's own Modbus TCP server, with its live-state
socket on; `station hmi` runs as a process of its own; Debian's chromium, driven by Playwright, is
the browser. The tests run in file order on one line: the live page shows each new part (and the
delay from verdict to browser is measured), a viewer cannot reach the settings and forged POSTs fail,
images are served from the image folder only, a reviewer marks rejects and exports them, an engineer
changes the threshold and the next parts follow it (audit row, YAML comments kept), /metrics parses,
and the login rate limit holds.
"""

from __future__ import annotations

import hashlib
import csv
import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from hmi_support import HmiProcess, add_user, chromium, csrf_of, free_port, logged_in_client, login, require_browser
from support import REPO, STATION_CLI, casting_data_dir, query, require_component

from station.app import Station
from station.configfile import load_config

pytestmark = pytest.mark.slow

PASSWORDS = {"op1": "operator-pass-1", "eng1": "engineer-pass-1", "adm1": "admin-pass-123"}
PARTS_PER_S = 2.0


def _frames(folder: Path) -> Path:
    data = casting_data_dir() / "test"
    require_component(data.is_dir(), f"the casting dataset ({data})")
    for label in ("def_front", "ok_front"):
        (folder / label).mkdir(parents=True)
        for src in sorted((data / label).glob("*.jpeg"))[:6]:
            shutil.copy(src, folder / label / src.name)
    return folder


@pytest.fixture(scope="module")
def line(tmp_path_factory, sim_plc_module):
    require_browser()
    tmp = tmp_path_factory.mktemp("hmi-line")
    frames = _frames(tmp / "frames")
    port = free_port()
    config = tmp / "station.yaml"
    config.write_text(f"""# station for the HMI browser test
line:
  max_parts_per_s: 5          # parts/s
camera:
  kind: replay
  path: {frames}
  rate_parts_per_s: {PARTS_PER_S}
  order: shuffled
  loop: true
model:
  path: {REPO / 'models' / 'impeller-resnet18.pt'}
  device: cpu
  backend: torch              # torch: no ONNX conversion at start (quicker test)
  threads: 1
  warmup_runs: 1
decision:
  threshold: 0.5              # the engineer changes this in the settings test
  deadline_ms: 500
reject:
  delay_ms: 800
  pulse_ms: 50
  # Generous: the browser, the HMI and the station share two loaded cores here, and a plc_slow alarm
  # (a reply past the tolerance) would be right, but it is not what this page test is about.
  late_tolerance_ms: 200
  actuator: {{kind: modbus_tcp, host: 127.0.0.1, port: {sim_plc_module.port}, coil: 3}}
tracelog:
  dir: log
  images: all
hmi:
  control_socket: ctl.sock    # the live channel
  state_dir: hmi-state
  users_file: users.json
  poll_ms: 200
""", encoding="utf-8")
    for name, password in PASSWORDS.items():
        role = {"op1": "operator", "eng1": "engineer", "adm1": "admin"}[name]
        made = add_user(config, name, role, password)
        assert made.returncode == 0, made.stderr
    verdicts: dict[int, tuple[float, object]] = {}
    lock = threading.Lock()

    def on_verdict(verdict, _frame) -> None:
        with lock:
            verdicts[verdict.seq] = (time.time(), verdict)

    station = Station(load_config(config), on_verdict=on_verdict)
    station.start()
    hmi = HmiProcess(config, port=port, cwd=tmp)
    try:
        hmi.wait_ready()
        yield {"tmp": tmp, "config": config, "base": hmi.base, "station": station, "verdicts": verdicts,
               "lock": lock, "hmi": hmi, "db": tmp / "log" / "trace.sqlite", "plc": sim_plc_module}
    finally:
        assert hmi.stop() == 0 or True  # SIGTERM: uvicorn exits 0; a kill is still a stop
        station.stop()
        assert not [t.name for t in station.threads() if t.is_alive()], "station threads left running"


@pytest.fixture(scope="module")
def sim_plc_module():
    from station.testbench.plc_sim import start_sim_server

    plc = start_sim_server("127.0.0.1", 0)
    yield plc
    plc.stop()


def test_live_page_shows_each_new_part_within_500_ms(line):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(line["base"] + "/live")
        page.wait_for_selector("#part[data-seq]")
        # Record, in the browser, when each part's number appears on the page (Date.now(): the same clock
        # as the station's time.time()).
        page.evaluate("""() => {
            window.seen = [];
            const slot = document.getElementById('part-slot');
            const note = () => { const el = document.getElementById('part');
                                  if (el && el.dataset.seq) window.seen.push([Number(el.dataset.seq), Date.now()]); };
            new MutationObserver(note).observe(slot, {childList: true, subtree: true});
        }""")
        t0 = time.time()
        page.wait_for_timeout(9000)
        t1 = time.time()
        seen = page.evaluate("window.seen")
        first_seen: dict[int, float] = {}
        for seq, ms in seen:
            first_seen.setdefault(seq, ms / 1000.0)
        with line["lock"]:
            window = {seq: t for seq, (t, _) in line["verdicts"].items() if t0 + 0.5 < t < t1 - 1.0}
        assert len(window) >= 10, f"too few parts in the window: {len(window)}"
        missing = sorted(set(window) - set(first_seen))
        assert not missing, f"parts never shown on the live page: {missing}"
        delays_ms = [1000 * (first_seen[seq] - t) for seq, t in window.items()]
        print(f"\nverdict -> browser: {len(delays_ms)} parts, median {statistics.median(delays_ms):.0f} ms, "
              f"max {max(delays_ms):.0f} ms")
        assert min(delays_ms) > 0
        assert statistics.median(delays_ms) < 500, delays_ms
        assert max(delays_ms) < 2000, delays_ms  # generous: a loaded 2-core CI box stalls processes
        # The image the page shows is the part's own, loaded from the image folder.
        assert page.evaluate("document.getElementById('part-image').naturalWidth") > 0
        assert page.inner_text("#count-parts").strip().isdigit()
        assert "No active alarm" in page.inner_text("#alarms-slot")


def test_viewer_cannot_reach_settings_and_forged_posts_fail(line):
    base = line["base"]
    before = line["config"].read_bytes()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(base + "/live")
        assert page.locator("nav a[href='/settings']").count() == 0
        page.goto(base + "/settings")
        assert "/login" in page.url, "a viewer is sent to the login page"
        login(page, base, "op1", PASSWORDS["op1"])
        response = page.goto(base + "/settings")
        assert response.status == 403 and "engineer" in page.inner_text("#error-detail")
    # A forged POST (another site's form, a script): a valid session but no or a wrong CSRF token.
    client = logged_in_client(base, "eng1", PASSWORDS["eng1"])
    try:
        no_token = client.post("/settings", data={"decision.threshold": "0.9"})
        wrong = client.post("/settings", data={"decision.threshold": "0.9", "csrf_token": "x" * 43})
        ack = client.post("/alarms/ack", data={"alarm": "camera"})
    finally:
        client.close()
    assert (no_token.status_code, wrong.status_code, ack.status_code) == (403, 403, 403)
    anonymous = httpx.post(base + "/login", data={"username": "eng1", "password": PASSWORDS["eng1"]})
    assert anonymous.status_code == 403, "a login form posted from elsewhere (no token) is refused"
    assert line["config"].read_bytes() == before, "nothing was written"


def test_images_come_only_from_the_image_folder(line):
    base = line["base"]
    images = line["tmp"] / "log" / "images"
    real = next(images.rglob("*.png"))
    rel = real.relative_to(images).as_posix()
    assert httpx.get(f"{base}/images/{rel}").status_code == 200
    outside = line["tmp"] / "secret.png"
    outside.write_bytes(real.read_bytes())
    (images / "link.png").symlink_to(outside)
    try:
        for path in ("/images/../trace.sqlite", "/images/%2e%2e/trace.sqlite", "/images/..%2ftrace.sqlite",
                     "/images/%2e%2e/%2e%2e/secret.png", "/images//etc/passwd", "/images/link.png",
                     f"/images/{rel}/../../../../station.yaml"):
            r = httpx.get(base + path)
            assert r.status_code == 404, (path, r.status_code)
            assert b"SQLite" not in r.content and b"root:" not in r.content
    finally:
        (images / "link.png").unlink()


def test_reviewer_marks_rejects_and_exports_them(line):
    base, db = line["base"], line["db"]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        login(page, base, "op1", PASSWORDS["op1"], then="/review")
        on_page = [int(s) for s in page.locator("article.review-item").evaluate_all(
            "items => items.map(i => i.dataset.seq)")]
        # Parts whose reject pulse has fired: their rows are final, any later change would be the HMI's.
        final = {r["seq"] for r in query(db, "SELECT seq FROM parts WHERE actuator_result != 'none'")}
        seqs = [s for s in on_page if s in final][:3]
        assert len(seqs) == 3, "rejects to review"
        before = {r["seq"]: dict(r) for r in query(db, "SELECT * FROM parts WHERE seq IN (%s)" %
                                                    ",".join(str(s) for s in seqs))}
        marked = {}
        for seq, review in zip(seqs, ("true_defect", "false_reject", "cant_tell")):
            item = page.locator(f"#review-{seq}")
            item.locator("input[name=note]").fill(f"checked {review}")
            item.locator(f"button[value={review}]").click()
            page.wait_for_load_state()
            marked[seq] = review
            assert page.locator(f"#review-{seq}").count() == 0, "a reviewed part leaves the open queue"
        page.goto(base + "/review?show=all")
        for seq, review in marked.items():
            assert "Reviewed" in page.inner_text(f"#review-{seq}")
    out = line["tmp"] / "export"
    result = subprocess.run([*STATION_CLI, "review", "export", "-c", str(line["config"]),
                             "--out", str(out)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    by_review = {v: k for k, v in marked.items()}
    def_files = sorted((out / "def_front").iterdir())
    ok_files = sorted((out / "ok_front").iterdir())
    assert [f.name for f in def_files] == [f"{by_review['true_defect']:010d}_true_defect.png"]
    assert [f.name for f in ok_files] == [f"{by_review['false_reject']:010d}_false_reject.png"]
    with open(out / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    assert {int(r["seq"]) for r in manifest} == {by_review["true_defect"], by_review["false_reject"]}
    for r in manifest:
        exported = out / r["file"]
        part = query(db, "SELECT image_path, image_sha256 FROM parts WHERE seq = ?", (int(r["seq"]),))[0]
        assert hashlib.sha256(exported.read_bytes()).hexdigest() == r["sha256"] == part["image_sha256"]
        assert r["original_path"] == part["image_path"] and r["reviewer"] == "op1"
        assert r["note"] == f"checked {r['review']}"
    # Reviews live in the HMI's own file; the audit rows did not change.
    after = {r["seq"]: dict(r) for r in query(db, "SELECT * FROM parts WHERE seq IN (%s)" %
                                               ",".join(str(s) for s in marked))}
    diffs = {s: {k: (before[s][k], after[s][k]) for k in after[s] if after[s][k] != before[s][k]} for s in marked}
    assert not any(diffs.values()), diffs
    again = subprocess.run([*STATION_CLI, "review", "export", "-c", str(line["config"]),
                            "--out", str(out)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 2 and "not an empty folder" in again.stderr, "an export is never overwritten"


def test_engineer_changes_the_threshold_and_the_next_parts_follow_it(line):
    base, db, config = line["base"], line["db"], line["config"]
    old_text = config.read_text()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        login(page, base, "eng1", PASSWORDS["eng1"], then="/settings")
        # A value the schema refuses is never written.
        page.fill("input[name='decision.deadline_ms']", "5000")
        page.click("#settings-form button[type=submit]")
        assert "decision.deadline_ms" in page.inner_text("#settings-error")
        assert config.read_text() == old_text
        page.goto(base + "/settings")
        page.fill("input[name='decision.threshold']", "0.97")
        page.click("#settings-form button[type=submit]")
        assert "decision.threshold: 0.5 -> 0.97" in page.inner_text("#settings-message")
        changed_at = time.time()
    new_text = config.read_text()
    changed = [(a, b) for a, b in zip(old_text.splitlines(), new_text.splitlines()) if a != b]
    assert changed == [("  threshold: 0.5              # the engineer changes this in the settings test",
                        "  threshold: 0.97             # the engineer changes this in the settings test")], changed
    events = query(db, "SELECT message FROM events WHERE kind = 'settings_change'")
    assert any("by eng1: decision.threshold 0.5 -> 0.97" in e["message"] for e in events), events
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with line["lock"]:
            later = [v for t, v in line["verdicts"].values() if t > changed_at + 0.2]
        if len(later) >= 4:
            break
        time.sleep(0.2)
    assert len(later) >= 4
    for v in later:
        assert v.threshold == 0.97
        if v.reason.value == "model":
            assert v.decision.value == ("reject" if v.p_defect >= 0.97 else "ok")
    rows = query(db, "SELECT threshold FROM parts WHERE seq >= ?", (min(v.seq for v in later),))
    assert {r["threshold"] for r in rows} == {0.97}


def test_metrics_parse(line):
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(11)  # rows settle (actuator results in) before /metrics counts them
    text = httpx.get(line["base"] + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["station_up"].samples[0].value == 1
    parts = families["station_parts"].samples
    assert sum(s.value for s in parts) > 0 and all({"decision", "reason"} <= s.labels.keys() for s in parts)
    verdict = {s.name: s.value for s in families["station_capture_to_verdict_seconds"].samples
               if s.name.endswith("_count")}
    assert verdict["station_capture_to_verdict_seconds_count"] > 0
    lateness = [s for s in families["station_pulse_lateness_seconds"].samples if s.name.endswith("_count")]
    assert lateness[0].value > 0, "reject pulses to the PLC were timed"
    for name in ("station_queue_depth", "station_alarm_active", "station_camera_reconnects",
                 "station_output_reconnects", "station_tracelog_backlog", "station_actuator_results",
                 "station_capture_to_command_seconds", "station_image_check_results"):
        assert name in families, name


def test_login_rate_limit(line):
    base = line["base"]
    with httpx.Client(base_url=base) as client:
        codes = []
        for _ in range(6):
            token = csrf_of(client.get("/login").text)
            r = client.post("/login", data={"username": "mallory", "password": "guess-guess", "csrf_token": token})
            codes.append(r.status_code)
        assert codes == [401] * 5 + [429], codes
        assert int(r.headers["Retry-After"]) > 0
    # The limit is on that name (and, higher, on the address): a real user still gets in.
    logged_in_client(base, "adm1", PASSWORDS["adm1"]).close()
