"""The gate's pure parts: its request headers, its waiting-room flag, Ollama's final stats, loaded models."""

from __future__ import annotations

import datetime as dt

import pytest

from voicelane.core.gate_headers import DEFAULT_PRIORITY, CallInfo, GateHeaderError, read_call_info
from voicelane.gate.cli import waiting_room
from voicelane.gate.metrics import final_stats
from voicelane.gate.models import LoadedModels, _loaded


def test_a_call_without_gate_headers_waits_behind_chats_and_is_never_shared() -> None:
    info = read_call_info({})
    assert info == CallInfo(DEFAULT_PRIORITY, "direct", None, None)
    assert DEFAULT_PRIORITY == 1


def test_gate_headers_round_trip() -> None:
    info = CallInfo(0, "chat", 2700, "0f3a9c")
    assert read_call_info(info.headers()) == info


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Voicelane-Priority", "3"),
        ("X-Voicelane-Priority", "-1"),
        ("X-Voicelane-Priority", "high"),
        ("X-Voicelane-Deadline-Ms", "0"),
        ("X-Voicelane-Deadline-Ms", "²"),
        ("X-Voicelane-Deadline-Ms", "99999999"),
        ("X-Voicelane-Key", "has space"),
        ("X-Voicelane-Class", "Chat"),
    ],
)
def test_malformed_gate_headers_name_themselves(header: str, value: str) -> None:
    with pytest.raises(GateHeaderError) as refused:
        read_call_info({header: value})
    assert refused.value.header == header


def test_the_waiting_room_flag_reads_places_per_priority_and_refuses_nonsense() -> None:
    assert waiting_room("0=32, 1=16,2=0") == {0: 32, 1: 16, 2: 0}
    for bad in ("3=1", "0=-1", "0:5", "1=many"):
        with pytest.raises(SystemExit, match="--max-waiting"):
            waiting_room(bad)


def test_the_final_line_of_an_ollama_stream_carries_its_load_duration() -> None:
    tail = b'{"message":{"content":"Hej"},"done":false}\n{"done":true,"load_duration":250000000}\n'
    assert final_stats(tail) == {"done": True, "load_duration": 250000000}
    assert final_stats(b'{"message":{"content":"Hej"},"done":false}\n') is None
    assert final_stats(b"data: [DONE]\n") is None


def test_loaded_models_report_their_expiry_and_readiness_waits_for_the_named_model() -> None:
    now = dt.datetime(2026, 12, 4, 5, 0, tzinfo=dt.UTC)
    soon = _loaded({"name": "smollm2-fast:135m", "size": 10, "expires_at": "2026-12-04T05:15:00Z"}, now)
    assert soon.expires_in_s == 900.0
    forever = _loaded({"name": "m", "expires_at": "2318-01-01T00:00:00Z"}, now)
    assert forever.expires_in_s is None
    models = LoadedModels("http://127.0.0.1:1", "smollm2-fast:135m")
    assert models.ready()[0] is False
    models.reachable, models.loaded = True, (forever,)
    assert models.ready() == (False, "smollm2-fast:135m is not loaded yet")
    models.loaded = (soon,)
    assert models.ready()[0] is True
