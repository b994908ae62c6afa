"""The chart's Grafana dashboards are what voicelane/delivery_dashboards.py builds, byte for byte."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.delivery.support import REPO
from voicelane.delivery_dashboards import (
    DASHBOARD_DIR,
    LANE_FILE,
    TTFA_FILE,
    generated_files,
    stale_files,
    write_all,
)

REGENERATE = "run `python -P -m voicelane.delivery_dashboards --write`"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "voicelane.delivery_dashboards", "--check", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_checked_in_dashboards_are_the_generated_ones() -> None:
    assert stale_files(REPO) == [], REGENERATE


def test_the_builder_makes_every_dashboard_in_the_chart_and_no_other() -> None:
    shipped = {path.relative_to(REPO) for path in (REPO / DASHBOARD_DIR).glob("*.json")}
    assert shipped == set(generated_files()) == {TTFA_FILE, LANE_FILE}


def test_generation_is_deterministic() -> None:
    assert generated_files() == generated_files()


def test_uids_and_titles_stay_so_imports_update_in_place() -> None:
    boards = {path.name: json.loads(content) for path, content in generated_files().items()}
    assert {name: (board["uid"], board["title"]) for name, board in boards.items()} == {
        "voicelane-ttfa.json": ("voicelane-ttfa", "VoiceLane / Time to first audio"),
        "voicelane-lane.json": ("voicelane-lane", "VoiceLane / Lane health"),
    }


def test_a_hand_edit_is_reported_and_write_restores_the_file(tmp_path: Path) -> None:
    shutil.copytree(REPO / DASHBOARD_DIR, tmp_path / DASHBOARD_DIR)
    edited = tmp_path / LANE_FILE
    board = json.loads(edited.read_text(encoding="utf-8"))
    board["panels"][1]["title"] = "Edited by hand"
    edited.write_text(json.dumps(board, indent=2), encoding="utf-8")

    assert stale_files(tmp_path) == [LANE_FILE]
    result = _check(tmp_path)
    assert result.returncode == 1
    assert str(LANE_FILE) in result.stderr

    assert write_all(tmp_path) == [LANE_FILE]
    assert _check(tmp_path).returncode == 0
    assert edited.read_text(encoding="utf-8") == (REPO / LANE_FILE).read_text(encoding="utf-8")
