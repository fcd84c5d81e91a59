"""The station's live-state socket (station.control) on a real running station: status, alarm
acknowledgement and settings reload named by user, all recorded in the events table; bad requests get
an answer, not a crash; a stale socket file is replaced, a live station's socket is not; the thread
starts last, stops first and removes its socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from support import make_tiny_model, query, until, write_config

from station.app import Station
from station.configfile import load_config
from station.control import request

CONFIG = """
line: {{max_parts_per_s: 20}}
camera: {{kind: synthetic, rate_parts_per_s: 10, size_px: 64}}
model: {{path: tiny.pt, device: cpu, warmup_runs: 0}}
decision: {{threshold: {threshold}, deadline_ms: 150}}
reject: {{delay_ms: 300, pulse_ms: 20, actuator: {{kind: log}}}}
tracelog: {{dir: log}}
hmi: {{control_socket: {socket}}}
"""


def start(tmp: Path, *, threshold: float = 0.5, sock: str = "ctl.sock") -> Station:
    make_tiny_model(tmp / "tiny.pt")
    station = Station(load_config(write_config(tmp / "s.yaml", CONFIG.format(threshold=threshold, socket=sock))))
    station.start()
    return station



def test_status_ack_and_reload_by_a_named_user(tmp_path):
    station = start(tmp_path)
    sock = tmp_path / "ctl.sock"
    try:
        until(lambda: station.stats.parts >= 5 and sock.exists())
        status = request(sock, {"op": "status"})["status"]
        assert status["running"] and status["healthy"] and status["counts"]["parts"] >= 5
        assert status["last_part"]["seq"] >= 1 and status["last_part"]["threshold"] == 0.5
        assert status["settings"]["threshold"] == 0.5 and status["queue"]["max"] == 4
        assert status["camera"]["open"] and status["outputs"]["reject"]["connected"]
        assert status["tracelog"]["db"].endswith("trace.sqlite") and status["config"]["sha256"] == station.loaded.sha256
        assert status["latency_ms"]["decide_ms"]["p50"] is not None

        station.set_alarm("camera", "camera lost: test")
        assert request(sock, {"op": "ack", "alarm": "camera", "user": "olga"}) == {"ok": True}
        alarm = request(sock, {"op": "status"})["status"]["alarms"][0]
        assert (alarm["name"], alarm["acked_by"]) == ("camera", "olga")
        refused = request(sock, {"op": "ack", "alarm": "drift", "user": "olga"})
        assert not refused["ok"] and "no active alarm 'drift'" in refused["error"]
        station.set_alarm("camera", None)
        station.set_alarm("camera", "lost again")
        assert request(sock, {"op": "status"})["status"]["alarms"][0]["acked_by"] is None, \
            "a raised-again alarm is a new alarm: not acknowledged"

        write_config(tmp_path / "s.yaml", CONFIG.format(threshold=0.7, socket="ctl.sock"))
        answer = request(sock, {"op": "reload", "user": "erik",
                                "changes": [{"key": "decision.threshold", "old": 0.5, "new": 0.7}]})
        assert answer["ok"] and any("threshold 0.7" in a for a in answer["applied"])
        assert station.decision.settings.threshold == 0.7
        write_config(tmp_path / "s.yaml", CONFIG.format(threshold=0.7, socket="ctl.sock") + "bogus: 1\n")
        bad = request(sock, {"op": "reload", "user": "erik", "changes": []})
        assert not bad["ok"] and "bogus" in bad["error"] and station.decision.settings.threshold == 0.7
    finally:
        station.stop()
    events = {(r["kind"], r["message"]) for r in query(tmp_path / "log/trace.sqlite", "SELECT * FROM events")}
    assert ("alarm_ack", "camera acknowledged by olga: camera lost: test") in events
    assert any(k == "settings_change" and m.startswith("by erik: decision.threshold 0.5 -> 0.7; applied")
               for k, m in events)
    assert any(k == "settings_change_failed" and "by erik" in m and "nothing changed" in m for k, m in events)
    assert not sock.exists(), "the socket file goes with the station"


def test_bad_requests_get_an_answer(tmp_path):
    station = start(tmp_path)
    sock = tmp_path / "ctl.sock"
    try:
        until(sock.exists)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"not json\n[1, 2]\n{\"op\": \"format_disk\"}\n{\"op\": \"ack\", \"alarm\": \"x\"}\n")
            data = b""
            while data.count(b"\n") < 4:
                data += s.recv(4096)
        answers = data.decode().splitlines()
        assert "expected one JSON object per line" in answers[0] and "expected a JSON object" in answers[1]
        assert "unknown op 'format_disk'" in answers[2] and "must name the user" in answers[3]
        assert request(sock, {"op": "status"})["ok"], "the server is still serving"
        assert station.control is not None and station.control.is_alive()
    finally:
        station.stop()


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path):
    stale = tmp_path / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody listens: what a killed station leaves
    first = start(tmp_path)
    try:
        until(lambda: first.control.listening)
        assert request(stale, {"op": "status"})["status"]["run_id"] == first.run_id
        other = tmp_path / "b"
        other.mkdir()
        second = start(other, sock=str(stale))
        try:
            time.sleep(1.0)
            assert not second.control.listening, "a live station's socket is not taken over"
            assert request(stale, {"op": "status"})["status"]["run_id"] == first.run_id
        finally:
            second.stop()
        assert stale.exists(), "stopping the second station leaves the first one's socket alone"
    finally:
        first.stop()
    assert not stale.exists()


@pytest.mark.parametrize("with_socket", [False, True])
def test_control_thread_starts_last_stops_first_and_only_when_configured(tmp_path, with_socket):
    make_tiny_model(tmp_path / "tiny.pt")
    text = CONFIG.format(threshold=0.5, socket="ctl.sock")
    if not with_socket:
        text = text.replace("hmi: {control_socket: ctl.sock}", "")
    station = Station(load_config(write_config(tmp_path / "s.yaml", text)))
    station.start()
    try:
        assert (station.control is not None) == with_socket
        assert ("control" in [t.name for t in station.threads()]) == with_socket
    finally:
        station.stop()
    assert not [t for t in station.threads() if t.is_alive()]
