"""The README's example app (`examples/voice_app.py`) against a running sidecar, as an app pod runs it.

It finds the sidecar through VOICELANE_URL (what the webhook sets), saves playable audio, prints the
answering tier, and turns a refusal into one line with the sidecar's error code and exit status 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "voice_app.py"


def run_example(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VOICELANE_URL": url}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False
    )


def test_example_app_saves_a_playable_reply_and_names_the_tier(start_sim, start_sidecar, tmp_path: Path) -> None:
    sim = start_sim("--ttft-ms", "5", "--tokens-per-s", "500")
    sidecar = start_sidecar(sim.url)
    spoken = run_example(sidecar.url, "Hej! Kan du ringa mig efter lunch?", "--source", "chat", cwd=tmp_path)
    assert spoken.returncode == 0, spoken.stderr
    assert "from the fast tier" in spoken.stdout or "from the deep tier" in spoken.stdout, spoken.stdout
    with wave.open(str(tmp_path / "reply.wav")) as audio:
        assert (audio.getnchannels(), audio.getsampwidth()) == (1, 2)
        assert audio.readframes(audio.getframerate() // 10)  # at least a tenth of a second of speech

    rewritten = run_example(
        sidecar.url, "Your build finished.", "--source", "notification", "--text-only", cwd=tmp_path
    )
    assert rewritten.returncode == 0, rewritten.stderr
    tier, _, text = rewritten.stdout.strip().partition(": ")
    assert tier in {"fast", "deep"}  # the phrase bank is off, and nothing was asked before
    assert text


def test_example_app_reports_a_refusal_with_its_code(start_sim, start_sidecar, tmp_path: Path) -> None:
    sim = start_sim("--ttft-ms", "5", "--tokens-per-s", "500")
    sidecar = start_sidecar(sim.url)
    refused = run_example(sidecar.url, "Hej!", "--source", "sms", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("refused (400) unknown_source:"), refused.stderr
    assert not (tmp_path / "reply.wav").exists()

    unreachable = run_example("http://127.0.0.1:9", "Hej!", cwd=tmp_path)
    assert unreachable.returncode == 1
    assert "did not answer" in unreachable.stderr
