"""The documentation that is generated from the code matches the code, and the manuals' links resolve.

docs/config-reference.md and the comments of config/station.yaml come from the pydantic field
descriptions; the register map in docs/plc-integration.md from REGISTER_MAP. A field added to any
section (another branch's `gate:` or `hmi:`) shows up in both on the next
`station config-reference --write`, and until then this test names the stale files and that command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from support import REPO

from station.actuators.plc_handshake import REGISTER_MAP
from station.cli_reference import MAP_BEGIN, MAP_END, PLC_MANUAL, REFERENCE, TEMPLATE, expected_files, stale_files
from station.config import StationConfig
from station.config_schema_walk import undocumented_fields
from station.config_template import regenerate
from station.configfile import parse_config_text

REGENERATE = "regenerate with: station config-reference --write"

# Manuals other branches add in parallel; the README links them already. Drop each name once its
# branch is merged (the test then checks that link like every other).
PENDING_FROM_OTHER_BRANCHES: set[str] = set()


def test_generated_files_are_up_to_date():
    stale = stale_files(REPO)
    assert not stale, f"stale generated file(s): {', '.join(stale)}; {REGENERATE}"


def test_every_config_field_has_a_description():
    missing = undocumented_fields(StationConfig)
    assert not missing, f"fields without a description (the YAML reference is made from them): {missing}"


def test_plc_manual_register_table_is_the_code_register_map():
    manual = (REPO / PLC_MANUAL).read_text(encoding="utf-8")
    table = manual.split(MAP_BEGIN, 1)[1].split(MAP_END, 1)[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append((int(cells[0]), cells[1].strip("`"), cells[2], cells[3].replace("\\|", "|")))
    assert rows == [tuple(r) for r in REGISTER_MAP]


def test_station_yaml_keeps_its_values_and_lists_every_key():
    text = (REPO / TEMPLATE).read_text(encoding="utf-8")
    assert parse_config_text(regenerate(text)) == parse_config_text(text)
    # Every key is written out, defaults included: none of the sections below is left to its default.
    for section in ("station:", "line:", "frame:", "queues:", "tracelog:", "service:"):
        assert f"\n{section}" in text
    for key in ("summary_interval_s:", "late_tolerance_ms:", "max_backlog:", "restart_window_s:"):
        assert key in text


class _GateDemo(BaseModel):
    """A section another branch might add."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_blur: float = Field(0.25, ge=0, le=1, description="Blur score above which a frame is out of domain.")


class _WithGate(StationConfig):
    gate: _GateDemo = Field(default_factory=_GateDemo, description="Image validity checks.")


def test_a_new_field_shows_up_in_both_outputs_and_makes_them_stale():
    expected = expected_files(REPO, _WithGate)
    assert "## `gate`" in expected[REFERENCE] and "Blur score above which a frame is out of domain." \
        in expected[REFERENCE]
    assert "\ngate:" in expected[TEMPLATE] and "max_blur: 0.25" in expected[TEMPLATE]
    assert "# Blur score above which a frame is out of domain. 0..1; default 0.25" in expected[TEMPLATE]
    assert set(stale_files(REPO, _WithGate)) == {REFERENCE, TEMPLATE}


def test_check_names_the_stale_file_and_write_fixes_it(tmp_path):
    """A copy of the checkout (package, config, docs), so the real command runs on files it may change."""
    for folder in ("station", "config", "docs", "systemd"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    plc = tmp_path / PLC_MANUAL
    plc.write_text(plc.read_text().replace("| 0 | `HEARTBEAT` |", "| 0 | `HEARTBEET` |"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "station.cli", "config-reference", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(tmp_path)})

    check = run("--check")
    assert check.returncode == 1 and f"stale: {PLC_MANUAL}; {REGENERATE}" in check.stderr, check.stderr
    write = run("--write")
    assert write.returncode == 0 and f"written: {PLC_MANUAL}" in write.stdout, write.stderr
    assert "`HEARTBEAT`" in plc.read_text() and run("--check").returncode == 0


def test_links_between_readme_and_manuals_resolve():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
        html_targets = re.findall(r'(?:src|href)="([^"]+)"', text)
        for target in [*re.findall(r"\]\(([^)\s]+)\)", text), *html_targets]:
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            relative = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(resolved)
            if relative in PENDING_FROM_OTHER_BRANCHES:
                continue
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved, anchors if not path else None):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def _anchors(page: Path, known: set[str] | None) -> set[str]:
    """Explicit `<a id>` anchors plus GitHub's anchors for headings."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)"></a>', text)) | (known or set())
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found
