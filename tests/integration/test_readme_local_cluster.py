"""The README's "Try it on a local cluster" section, run as written against a fresh local cluster.

Every line of the section's fenced blocks runs, in order, in one shell at the repository root. Two things
are rewritten, as a reader's second terminal would have them: the cluster folder (`.voicelane/cluster`,
the default of `voicelane cluster up`) becomes a temporary one, and the long-running operator is put in
the background. At the end the sample lane is Ready and the labelled pod carries the injected sidecar.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicelane.processes import voicelane_argv

pytestmark = [pytest.mark.cluster, pytest.mark.tools, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION_TITLE = "## Try it on a local cluster"
DEFAULT_CLUSTER_DIR = ".voicelane/cluster"
KUBECTL = REPO / ".tools/bin/kubectl"


def section_lines() -> list[str]:
    """The lines of the section's fenced bash blocks, in order."""
    section = README.read_text(encoding="utf-8").split(SECTION_TITLE, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines()]


def as_run_here(line: str, cluster_dir: Path) -> str:
    """The line with the cluster in `cluster_dir` and the operator in the background; nothing else changed."""
    line = line.replace(f"$PWD/{DEFAULT_CLUSTER_DIR}", str(cluster_dir)).replace(DEFAULT_CLUSTER_DIR, str(cluster_dir))
    line = line.replace("voicelane cluster up", f"voicelane cluster up --dir {cluster_dir}")
    if line.startswith("voicelane operator "):
        assert "#" not in line, "a comment after the operator's command would swallow the `&`"
        line += " &"
    return line


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "cluster"
    try:
        yield folder
    finally:
        subprocess.run(voicelane_argv("cluster", "down", "--dir", str(folder)), capture_output=True, check=False)


@pytest.fixture
def readme_run(cluster_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.CompletedProcess[bytes], str]]:
    """The section run in a shell of its own process group (the operator's too); its exit and output."""
    lines = section_lines()
    assert any(line.startswith("voicelane operator ") for line in lines)
    script = "\n".join(["set -euxo pipefail", *(as_run_here(line, cluster_dir) for line in lines)])
    log = tmp_path / "readme.log"
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    with log.open("wb") as output:
        # Output to a file, not a pipe: the backgrounded operator keeps it open after the shell exits.
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        shell.wait(timeout=240)
        yield subprocess.CompletedProcess(shell.args, shell.returncode), log.read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)  # the group of the shell: the operator it left running


def kubectl_json(cluster_dir: Path, *args: str) -> Any:
    result = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={cluster_dir / 'kubeconfig'}", *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_the_readme_steps_give_a_ready_lane_and_an_injected_sidecar(
    cluster_dir: Path, readme_run: tuple[subprocess.CompletedProcess[bytes], str]
) -> None:
    finished, output = readme_run

    assert finished.returncode == 0, output[-4000:]
    lane = kubectl_json(cluster_dir, "get", "voicelane", "voice", "-n", "default")
    ready = [c for c in lane["status"]["conditions"] if c["type"] == "Ready"]
    assert [c["status"] for c in ready] == ["True"]
    pod = kubectl_json(cluster_dir, "get", "pod", "hello", "-n", "default")
    sidecars = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "voicelane-sidecar"]
    assert [c.get("restartPolicy") for c in sidecars] == ["Always"]
    assert "voicelane-sidecar" in output.splitlines()
