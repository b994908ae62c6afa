"""`voicelane demo --backend sim` as a user runs it: both variants replay, the slow one says how far it is.

The quick demo runs the lane and its baseline side by side against simulated tiers. The baseline drains
its backlog for half a minute; a progress line every few seconds tells the user it is moving. At the end
come the before/after table, what the lane did, and the report with its raw measurements.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from voicelane.processes import voicelane_argv

pytestmark = pytest.mark.timeout(240)

PROGRESS = re.compile(r"^ {4}(lane|baseline): (\d+)/(\d+) answered, (\d+) waiting, (\d+) still to send, (\d+) s$")
SCENARIOS = ("Chat (short)", "Notification", "Email TL;DR", "Duplicate requests", "Burst beyond the rate limit")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    report_dir = tmp_path_factory.mktemp("demo")
    argv = voicelane_argv("demo", "--backend", "sim", "--duration", "4", "--report-dir", str(report_dir))
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=220, check=False)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout, report_dir


def test_baseline_replay_prints_progress_until_it_is_answered(demo: tuple[str, Path]) -> None:
    output, _ = demo
    lines = [PROGRESS.match(line) for line in output.splitlines()]
    baseline = [(int(m[2]), int(m[3]), int(m[4]), int(m[6])) for m in lines if m and m[1] == "baseline"]
    assert len(baseline) >= 2, output  # the baseline's backlog takes well over one progress period
    answered = [done for done, _, _, _ in baseline]
    assert answered == sorted(answered), f"answered counts go down: {answered}"
    total = baseline[0][1]
    assert all(done + waiting <= total for done, _, waiting, _ in baseline)
    seconds = [elapsed for _, _, _, elapsed in baseline]
    assert seconds == sorted(set(seconds)), f"progress lines not one per period: {seconds}"
    assert f"baseline: {total} requests in" in output


def test_prints_the_comparison_and_writes_the_report(demo: tuple[str, Path]) -> None:
    output, report_dir = demo
    for scenario in SCENARIOS:
        assert re.search(
            rf"^\| {re.escape(scenario)} \| [\d.]+ s / [\d.]+ s \| [\d.]+ s / [\d.]+ s \|", output, re.M
        ), (
            scenario,
            output,
        )
    assert "What the lane did:" in output
    assert f"report: {report_dir / 'report.md'}" in output
    raw = json.loads((report_dir / "measurements.json").read_text())
    assert set(raw) == {"lane", "baseline"}
    assert len(raw["lane"]) == len(raw["baseline"]) > 0
    assert (report_dir / "ttfa-by-class.png").stat().st_size > 0
