"""The README's compatibility table, proven: the same calls direct to real Ollama and through the sidecar.

Each test makes one call both ways with the official `ollama` and `openai` Python clients and
compares what an app would see. With `temperature` 0 and a `seed` the tiny model answers the same
text every time, so equal text means the sidecar passed the call's settings on unchanged.

Ollama's 503 for a full queue is shown against the simulator instead
(tests/integration/sidecar/test_transparent_api.py): Ollama 0.17.4 hands every call for a loaded
model to its runner, where it waits, so OLLAMA_MAX_QUEUE only bounds calls while a model loads.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
import requests

from tests.realstack.conftest import running_sidecar
from voicelane.sidecar.config import Protocol, UpstreamConfig
from voicelane.sidecar.upstream import ChatRequest
from voicelane.sidecar.upstream.ollama import OllamaClient
from voicelane.stack.ollama import Stack

pytestmark = [pytest.mark.realstack, pytest.mark.timeout(600)]

NUM_PREDICT_BOUND = 96
DETERMINISTIC = {"temperature": 0, "seed": 7, "num_predict": 16}
QUESTION = [{"role": "user", "content": "Name three colours."}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def sidecar_url(ollama_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("compat-sidecar-logs")
    config = {
        "upstreams": {
            tier.tier: {"url": tier.url, "protocol": "ollama", "model": tier.model, "num_predict": NUM_PREDICT_BOUND}
            for tier in (ollama_stack.fast, ollama_stack.deep)
        },
        "phrase_bank": {"enabled": False},
        # Repeated identical calls must reach the model, not the cache, for the comparisons to mean anything.
        "cache": {"enabled": False},
        "single_flight": {"enabled": False},
        "rate_limit": {"burst": 100, "sustained_per_s": 50},
        "scheduler": {"max_waiting": 32},
    }
    with running_sidecar(config, logs) as url:
        yield url


@pytest.fixture(scope="module")
def fast(ollama_stack: Stack) -> str:
    return ollama_stack.fast.model


def both(ollama_stack: Stack, sidecar_url: str) -> tuple[ollama.Client, ollama.Client]:
    return ollama.Client(host=ollama_stack.fast.url, timeout=300), ollama.Client(host=sidecar_url, timeout=300)


def openai_both(ollama_stack: Stack, sidecar_url: str) -> tuple[openai.OpenAI, openai.OpenAI]:
    return (
        openai.OpenAI(base_url=ollama_stack.fast.url + "/v1", api_key="unused", timeout=300, max_retries=0),
        openai.OpenAI(base_url=sidecar_url + "/v1", api_key="unused", timeout=300, max_retries=0),
    )


def ollama_error(call: Any) -> tuple[int, str]:
    with pytest.raises(ollama.ResponseError) as caught:
        call()
    return caught.value.status_code, caught.value.error


# ----- chat and generate -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [DETERMINISTIC, {"temperature": 0, "num_predict": 16, "stop": ["\n\n"]}])
def test_chat_gives_the_same_text_both_ways_streamed_and_not(
    ollama_stack: Stack, sidecar_url: str, fast: str, options: dict[str, Any]
) -> None:
    # With a seed the call is forwarded as it is; without, the lane's own token path answers it.
    direct, through = both(ollama_stack, sidecar_url)
    expected = direct.chat(model=fast, messages=QUESTION, options=options).message.content
    assert expected
    assert through.chat(model=fast, messages=QUESTION, options=options).message.content == expected
    streamed = list(through.chat(model=fast, messages=QUESTION, options=options, stream=True))
    assert "".join(part.message.content for part in streamed) == expected
    assert streamed[-1].done is True
    assert {part.model for part in streamed} == {fast}


@pytest.mark.parametrize("options", [DETERMINISTIC, {"temperature": 0, "num_predict": 16}])
def test_generate_gives_the_same_text_both_ways_streamed_and_not(
    ollama_stack: Stack, sidecar_url: str, fast: str, options: dict[str, Any]
) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    expected = direct.generate(model=fast, prompt="The sky is", options=options).response
    assert expected
    assert through.generate(model=fast, prompt="The sky is", options=options).response == expected
    streamed = list(through.generate(model=fast, prompt="The sky is", options=options, stream=True))
    assert "".join(part.response for part in streamed) == expected


def test_num_predict_and_stop_have_the_same_effect_both_ways(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    short = {**DETERMINISTIC, "num_predict": 4}
    answers = [client.chat(model=fast, messages=QUESTION, options=short) for client in (direct, through)]
    assert answers[0].message.content == answers[1].message.content
    assert answers[0].eval_count == answers[1].eval_count == 4
    assert answers[0].done_reason == answers[1].done_reason == "length"
    # A stop sequence taken from the unstopped answer cuts both at the same place.
    full = direct.chat(model=fast, messages=QUESTION, options=DETERMINISTIC).message.content
    stop = full.split()[2]
    stopped = {**DETERMINISTIC, "stop": [stop]}
    texts = [
        client.chat(model=fast, messages=QUESTION, options=stopped).message.content for client in (direct, through)
    ]
    assert texts[0] == texts[1]
    assert stop not in texts[1]
    assert len(texts[1]) < len(full)


@pytest.mark.parametrize("output_format", ["json", PERSON_SCHEMA], ids=["json", "schema"])
def test_format_gives_the_same_parseable_json_both_ways(
    ollama_stack: Stack, sidecar_url: str, fast: str, output_format: Any
) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    ask = [{"role": "user", "content": "Describe a person as JSON with a name and an age."}]
    options = {**DETERMINISTIC, "num_predict": NUM_PREDICT_BOUND}
    texts = [
        client.chat(model=fast, messages=ask, format=output_format, options=options).message.content
        for client in (direct, through)
    ]
    assert texts[0] == texts[1]
    parsed = json.loads(texts[1])
    assert isinstance(parsed, dict)
    if output_format == PERSON_SCHEMA:
        assert {"name", "age"} <= set(parsed)


def test_tools_reach_ollama(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    # The shipped SmolLM2 template has no tool support, so Ollama refuses the call; the same refusal
    # through the sidecar shows the tools reached Ollama rather than being dropped (a dropped list
    # would have been answered with plain text). Tool calls coming back is not shown by this model.
    direct, through = both(ollama_stack, sidecar_url)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    direct_error = ollama_error(lambda: direct.chat(model=fast, messages=ask, tools=[WEATHER_TOOL]))
    assert direct_error[0] == 400
    assert "does not support tools" in direct_error[1]
    assert ollama_error(lambda: through.chat(model=fast, messages=ask, tools=[WEATHER_TOOL])) == direct_error


def test_keep_alive_and_think_are_set_by_the_lane_and_say_so(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    body = {
        "model": fast,
        "messages": QUESTION,
        "stream": False,
        "think": True,
        "keep_alive": "1m",
        "options": DETERMINISTIC,
    }
    # Direct, Ollama refuses thinking for this model; the lane never thinks (time to first token) and
    # keeps its model loaded for the tier's keep-alive, and names both fields it set otherwise.
    direct = requests.post(ollama_stack.fast.url + "/api/chat", json=body, timeout=300)
    assert direct.status_code == 400
    assert "does not support thinking" in direct.json()["error"]
    through = requests.post(sidecar_url + "/api/chat", json=body, timeout=300)
    assert through.status_code == 200, through.text
    assert through.headers["X-Voicelane-Overridden"] == "keep_alive,think"
    expires = _expires_in_s(ollama_stack.fast.url, fast)
    assert 14 * 60 < expires <= 15 * 60


def _expires_in_s(url: str, model: str) -> float:
    [loaded] = [m for m in requests.get(url + "/api/ps", timeout=10).json()["models"] if m["name"] == model]
    expires = datetime.datetime.fromisoformat(loaded["expires_at"])
    return (expires - datetime.datetime.now(datetime.UTC)).total_seconds()


# ----- model names and errors ----------------------------------------------------------------------


def test_an_unknown_model_gets_ollamas_own_404_both_ways(ollama_stack: Stack, sidecar_url: str) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    for call in (
        lambda client: client.chat(model="does-not-exist:7b", messages=QUESTION),
        lambda client: client.generate(model="does-not-exist:7b", prompt="hi"),
        lambda client: client.show("does-not-exist:7b"),
        lambda client: client.embed(model="does-not-exist:7b", input="hi"),
    ):
        expected = ollama_error(lambda call=call: call(direct))
        assert expected[0] == 404
        assert ollama_error(lambda call=call: call(through)) == expected
    direct_openai, through_openai = openai_both(ollama_stack, sidecar_url)
    errors = []
    for client in (direct_openai, through_openai):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="does-not-exist:7b", messages=QUESTION)  # type: ignore[arg-type]
        errors.append(caught.value.body)
    assert errors[0] == errors[1]


def test_ollamas_own_errors_come_back_with_its_status_and_shape(
    ollama_stack: Stack, sidecar_url: str, fast: str
) -> None:
    # An option of the wrong type is Ollama's to judge: the call is forwarded and its answer kept.
    body = {"model": fast, "messages": QUESTION, "stream": False, "options": {"num_ctx": "large"}}
    direct = requests.post(ollama_stack.fast.url + "/api/chat", json=body, timeout=60)
    through = requests.post(sidecar_url + "/api/chat", json=body, timeout=60)
    assert (through.status_code, through.json()) == (direct.status_code, direct.json())
    # The lane's own refusals keep their shape, with the lane's code in a header.
    refused = requests.post(sidecar_url + "/api/chat", json={**body, "options": {"num_predict": 0}}, timeout=60)
    assert refused.status_code == 400
    assert refused.headers["X-Voicelane-Error"] == "invalid_field"
    assert set(refused.json()) == {"error"}


# ----- model information and embeddings ------------------------------------------------------------


def test_model_information_passes_through(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    assert through.show(fast).modelfile == direct.show(fast).modelfile
    listed = {m.model for m in through.list().models}
    assert {m.model for m in direct.list().models} <= listed
    assert {ollama_stack.fast.model, ollama_stack.deep.model} <= listed
    direct.generate(model=fast, prompt="hi", options={"num_predict": 1})
    assert fast in {m.model for m in through.ps().models}
    version = requests.get(sidecar_url + "/api/version", timeout=10).json()
    assert version == requests.get(ollama_stack.deep.url + "/api/version", timeout=10).json()
    direct_openai, through_openai = openai_both(ollama_stack, sidecar_url)
    assert {m.id for m in direct_openai.models.list()} <= {m.id for m in through_openai.models.list()}


def test_embeddings_pass_through_untouched(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    direct, through = both(ollama_stack, sidecar_url)
    assert (
        through.embed(model=fast, input=["one", "two"]).embeddings
        == direct.embed(model=fast, input=["one", "two"]).embeddings
    )
    direct_openai, through_openai = openai_both(ollama_stack, sidecar_url)
    vectors = [
        client.embeddings.create(model=fast, input="one").data[0].embedding
        for client in (direct_openai, through_openai)
    ]
    assert vectors[0] == vectors[1]
    assert len(vectors[0]) > 1


# ----- the OpenAI client -----------------------------------------------------------------------------


def test_openai_chat_gives_the_same_text_both_ways(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    direct, through = openai_both(ollama_stack, sidecar_url)
    settings: dict[str, Any] = {"model": fast, "temperature": 0, "max_tokens": 16}
    for extra in ({}, {"seed": 7}):  # the lane's token path, and forwarding
        expected = direct.chat.completions.create(messages=QUESTION, **settings, **extra).choices[0].message.content  # type: ignore[arg-type]
        answer = through.chat.completions.create(messages=QUESTION, **settings, **extra)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == expected
        stream = through.chat.completions.create(messages=QUESTION, stream=True, **settings, **extra)  # type: ignore[arg-type]
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected


def test_openai_content_parts_are_accepted(ollama_stack: Stack, sidecar_url: str, fast: str) -> None:
    direct, through = openai_both(ollama_stack, sidecar_url)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}]
    texts = [
        client.chat.completions.create(model=fast, messages=parts, temperature=0, max_tokens=16)
        .choices[0]
        .message.content  # type: ignore[arg-type]
        for client in (direct, through)
    ]
    assert texts[0] == texts[1]
    assert texts[1]


# ----- the sidecar's own client against the real server --------------------------------------------


def test_the_native_client_keeps_its_promises_against_real_ollama(ollama_stack: Stack, fast: str) -> None:
    config = UpstreamConfig(url=ollama_stack.fast.url, protocol=Protocol.OLLAMA, model=fast, num_predict=64, stop=())

    async def collect(request: ChatRequest) -> str:
        client = OllamaClient(config)
        try:
            return "".join([token async for token in client.stream_chat(request)])
        finally:
            await client.close()

    # think: false is accepted by a model without thinking; keep_alive "15m" keeps it loaded that long.
    full = asyncio.run(collect(ChatRequest(messages=QUESTION, temperature=0.0, keep_alive="15m")))
    assert full
    assert 14 * 60 < _expires_in_s(ollama_stack.fast.url, fast) <= 15 * 60
    bounded = asyncio.run(collect(ChatRequest(messages=QUESTION, temperature=0.0, num_predict=3)))
    assert full.startswith(bounded)
    assert len(bounded) < len(full)
    stop = full.split()[1]
    stopped = asyncio.run(collect(ChatRequest(messages=QUESTION, temperature=0.0, stop=(stop,))))
    assert stop not in stopped
    assert full.startswith(stopped)
