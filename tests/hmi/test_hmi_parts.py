"""HMI parts without a browser: users and their CLI, the settings editor against a real station (comments
kept, refused reloads restore the file byte for byte), the login limiter, the operator explanations,
the review export's checks, and that the station never imports the web stack."""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hmi_support import add_user
from support import REPO, STATION_CLI, make_tiny_model, query, write_config

from station.app import Station
from station.configfile import load_config

pytest.importorskip("fastapi")  # the hmi extra (part of the test extra)

from station.hmi import explain  # noqa: E402
from station.hmi.live import station_request  # noqa: E402
from station.hmi.reviews import ReviewError, ReviewStore, export_reviews  # noqa: E402
from station.hmi.security import LoginLimiter  # noqa: E402
from station.hmi.settings_edit import SettingsEditor, SettingsError  # noqa: E402
from station.hmi.tracedb import TraceDb  # noqa: E402
from station.hmi.users import UserStore  # noqa: E402

YAML = """# a station for the settings tests
line:
  max_parts_per_s: 20         # parts/s
camera: {kind: synthetic, rate_parts_per_s: 10, size_px: 64}
model: {path: tiny.pt, device: cpu, warmup_runs: 0}
decision:
  threshold: 0.5              # reject at or above
  deadline_ms: 150            # ms after capture
reject: {delay_ms: 300, pulse_ms: 20, actuator: {kind: log}}
tracelog:
  dir: log                    # trace log folder
hmi:
  control_socket: ctl.sock    # live channel
  users_file: users.json
"""


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*STATION_CLI, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_users_have_argon2_hashes_and_no_default(tmp_path):
    config = write_config(tmp_path / "s.yaml", YAML)
    store = UserStore(tmp_path / "users.json")
    assert store.authenticate("admin", "admin") is None and store.list() == [], "no default account"
    assert add_user(config, "ana", "admin", "correct horse").returncode == 0
    data = json.loads((tmp_path / "users.json").read_text())
    assert data["users"]["ana"]["hash"].startswith("$argon2id$") and "correct horse" not in json.dumps(data)
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o640"
    assert store.authenticate("ana", "correct horse").role == "admin"
    assert store.authenticate("ana", "wrong horse") is None
    short = add_user(config, "bo", "operator", "short")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    # The same checks behind the CLI and the admin page (one subprocess each costs seconds: the rest in-process).
    from station.hmi.users import UserError

    with pytest.raises(UserError, match="exists"):
        store.add("ana", "operator", "another pass", by="test")
    with pytest.raises(UserError, match="user name"):
        store.add("../x", "operator", "long enough", by="test")
    with pytest.raises(UserError, match="viewers need no account"):
        store.add("cy", "viewer", "long enough", by="test")
    assert cli("users", "-c", str(config), "set-role", "ana", "engineer").returncode == 0
    assert store.get("ana").role == "engineer" and not store.get("ana").can("admin")
    store.remove("ana")
    assert store.get("ana") is None and store.authenticate("ana", "correct horse") is None
    missing = cli("users", "-c", str(tmp_path / "nope.yaml"), "list")
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_login_limiter_counts_per_name_and_address_and_forgets_after_the_window():
    limiter = LoginLimiter(max_failures=3, window_s=60)
    for i in range(3):
        assert limiter.retry_after_s("eve", "10.0.0.9", now=100 + i) == 0
        limiter.failed("eve", "10.0.0.9", now=100 + i)
    assert limiter.retry_after_s("EVE", "127.0.0.1", now=105) == 55, "the name is limited from anywhere"
    assert limiter.retry_after_s("bob", "10.0.0.9", now=105) == 0, "the address has a higher limit"
    assert limiter.retry_after_s("eve", "10.0.0.9", now=161) == 0, "the window passed"
    for i in range(12):
        limiter.failed(f"user{i}", "10.0.0.7", now=200)
    assert limiter.retry_after_s("someone", "10.0.0.7", now=201) > 0, "spraying names from one address is limited"


def test_explanations_cover_the_names_other_branches_add_and_show_unknown_ones_as_is():
    for name in ("image_check", "timeout", "bad_frame"):
        assert explain.reason(name).text
    for name in ("plc_slow", "image_quality", "drift", "camera", "reject_output_stuck"):
        assert explain.alarm(name).text
    assert explain.actuator_result("unknown").text
    assert explain.reason("cosmic_ray") == explain.Explanation("cosmic_ray", "cosmic_ray", "")
    assert explain.alarm(None).title == ""


@pytest.fixture
def running(tmp_path):
    make_tiny_model(tmp_path / "tiny.pt")
    config = write_config(tmp_path / "s.yaml", YAML)
    station = Station(load_config(config))
    station.start()
    yield station, config
    station.stop()


def ask(sock: Path):
    return lambda payload: station_request(sock, payload, timeout_s=30.0)


def test_settings_change_keeps_comments_and_reaches_the_station(running, tmp_path):
    station, config = running
    editor = SettingsEditor(config)
    before = config.read_text()
    answer = asyncio.run(editor.apply({"decision.threshold": "0.8", "tracelog.images": "rejects",
                                       "decision.deadline_ms": "150"}, user="erik",
                                      running_sha256=station.loaded.sha256, ask_station=ask(tmp_path / "ctl.sock")))
    assert answer["ok"] and [c["key"] for c in answer["changes"]] == ["decision.threshold", "tracelog.images"]
    after = config.read_text()
    diff = [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == ["-  threshold: 0.5              # reject at or above",
                    "+  threshold: 0.8              # reject at or above",
                    "+  images: rejects"], diff
    assert after.count("#") == before.count("#")
    assert station.decision.settings.threshold == 0.8 and station.tracelog.images.policy == "rejects"
    with pytest.raises(SettingsError, match="nothing changed"):
        asyncio.run(editor.apply({"decision.threshold": "0.8"}, user="erik", running_sha256=station.loaded.sha256,
                                 ask_station=ask(tmp_path / "ctl.sock")))
    with pytest.raises(SettingsError, match="decision.deadline_ms"):
        asyncio.run(editor.apply({"decision.deadline_ms": "900"}, user="erik", running_sha256=station.loaded.sha256,
                                 ask_station=ask(tmp_path / "ctl.sock")))
    assert config.read_text() == after


def test_a_reload_the_station_refuses_restores_the_file_byte_for_byte(running, tmp_path):
    station, config = running
    before = config.read_bytes()
    (tmp_path / "tiny.pt").write_bytes(b"corrupted after start")  # any reload must now re-verify and fail
    with pytest.raises(SettingsError, match="refused"):
        asyncio.run(SettingsEditor(config).apply({"decision.threshold": "0.9"}, user="erik",
                                                 running_sha256=station.loaded.sha256,
                                                 ask_station=ask(tmp_path / "ctl.sock")))
    assert config.read_bytes() == before and station.decision.settings.threshold == 0.5
    # A file edited by hand and not reloaded is not the file the station runs: refused before writing.
    config.write_text(config.read_text().replace("deadline_ms: 150", "deadline_ms: 140"))
    with pytest.raises(SettingsError, match="differs from the file the station runs"):
        asyncio.run(SettingsEditor(config).apply({"decision.threshold": "0.9"}, user="erik",
                                                 running_sha256=station.loaded.sha256,
                                                 ask_station=ask(tmp_path / "ctl.sock")))
    deadline = time.monotonic() + 10  # the writer commits events within tens of milliseconds
    while time.monotonic() < deadline:
        rows = query(tmp_path / "log/trace.sqlite", "SELECT message FROM events WHERE kind = 'settings_change_failed'")
        if rows:
            break
        time.sleep(0.05)
    assert any(r["message"].startswith("by erik: decision.threshold 0.5 -> 0.9; refused") for r in rows), rows


def test_review_export_checks_every_image(tmp_path):
    make_tiny_model(tmp_path / "tiny.pt")
    text = YAML.replace("rate_parts_per_s: 10, size_px: 64}", "rate_parts_per_s: 20, size_px: 64, limit: 6}") \
        .replace("threshold: 0.5 ", "threshold: 0.000001")
    from support import run_to_end

    run_to_end(load_config(write_config(tmp_path / "s.yaml", text)))
    db = TraceDb(tmp_path / "log")
    parts = [dict(r) for r in query(db.db_path, "SELECT * FROM parts ORDER BY seq")]
    assert len(parts) == 6 and {p["decision"] for p in parts} == {"reject"}
    store = ReviewStore(tmp_path / "hmi" / "reviews.sqlite")
    with pytest.raises(ReviewError, match="no reviews"):
        export_reviews(store, db, tmp_path / "out0")
    for part, review in zip(parts, ("true_defect", "false_reject", "cant_tell", "true_defect", "escape")):
        store.add(part, review=review, reviewer="qa", note=None)
    store.add(parts[1], review="true_defect", reviewer="qa2", note="second look")  # the latest review counts
    (db.images_dir / parts[3]["image_path"]).write_bytes(b"changed after the station wrote it")
    with pytest.raises(ReviewError):
        store.add(parts[0], review="looks fine", reviewer="qa", note=None)
    result = export_reviews(store, db, tmp_path / "out")
    assert result.exported == 3 and result.skipped_cant_tell == 1
    assert len(result.missing) == 1 and "does not match the sha256" in result.missing[0]
    assert sorted(p.name for p in (tmp_path / "out/def_front").iterdir()) == [
        f"{parts[0]['seq']:010d}_true_defect.png", f"{parts[1]['seq']:010d}_true_defect.png",
        f"{parts[4]['seq']:010d}_escape.png"]
    assert not (tmp_path / "out/ok_front").exists()
    with pytest.raises(ReviewError, match="not an empty folder"):
        export_reviews(store, db, tmp_path / "out")


def test_the_station_never_imports_the_web_stack():
    code = ("import sys, station.app, station.service, station.cli_config, station.control, station.live_state; "
            "print([m for m in ('fastapi', 'starlette', 'uvicorn', 'argon2', 'jinja2', 'prometheus_client', "
            "'ruamel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
