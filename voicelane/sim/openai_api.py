"""The simulated OpenAI-compatible API: chat completions (SSE or whole), model list, and speech."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from voicelane.sim import audio
from voicelane.sim.bodies import (
    BadRequest,
    field,
    injected_fault,
    json_answer,
    messages_field,
    read_json,
    simulator,
    string_list,
)
from voicelane.sim.faults import Fault
from voicelane.sim.latency import DEFAULT_KEEP_ALIVE_S
from voicelane.sim.playback import GenerationPlan, abort, hold, play
from voicelane.sim.replies import (
    choose_text,
    content_text,
    count_tokens,
    embedding,
    embedding_inputs,
    generate_reply,
    last_user_content,
)
from voicelane.sim.state import ServerBusy
from voicelane.sim.wire import BUSY_MESSAGE, OpenAIChatDialect, openai_error

SPEECH_FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}
MAX_SPEECH_INPUT = 4096  # OpenAI's own limit on `input`


async def chat_completions(request: web.Request) -> web.StreamResponse:
    sim = simulator(request)
    body = await read_json(request)
    name = field(body, "model", str)
    if not name:
        raise BadRequest("you must provide a model parameter")
    info = sim.resolve_model(name)
    if info is None:
        raise BadRequest(f"model '{name}' not found", 404, kind="invalid_request_error")
    messages = messages_field(body, required=True)
    max_tokens = field(body, "max_completion_tokens", int) or field(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest("max_tokens must be at least 1")
    stop = string_list(body.get("stop"), "stop")
    stream = field(body, "stream", bool, False)
    stream_options = field(body, "stream_options", dict, {}) or {}
    dialect = OpenAIChatDialect(
        name, include_usage=bool(stream_options.get("include_usage")), wall_clock=sim.wall_clock
    )
    text = choose_text(sim.settings.reply, sim.settings.reply_text, last_user_content(messages))
    plan = GenerationPlan(
        model=info.name,
        reply=generate_reply(text, max_tokens=max_tokens, stop=stop),
        prompt_tokens=count_tokens(content_text(m.get("content")) for m in messages),
        keep_alive_s=DEFAULT_KEEP_ALIVE_S,
        stream=stream,
        max_tokens=max_tokens,
    )
    try:
        return await play(request, sim, dialect, plan, injected_fault(request))
    except ServerBusy:
        return json_answer(openai_error(BUSY_MESSAGE), 503)


async def models(request: web.Request) -> web.Response:
    sim = simulator(request)
    data = [
        {"id": info.name, "object": "model", "created": int(info.modified_at), "owned_by": "library"}
        for info in sim.catalog.all()
    ]
    return json_answer({"object": "list", "data": data})


def _speech_request(body: dict[str, Any]) -> tuple[str, float, str]:
    text = field(body, "input", str)
    if not text:
        raise BadRequest("field 'input' is required and must not be empty")
    if len(text) > MAX_SPEECH_INPUT:
        raise BadRequest(f"field 'input' is longer than {MAX_SPEECH_INPUT} characters")
    field(body, "model", str)
    field(body, "voice", str)
    field(body, "instructions", str)
    speed = field(body, "speed", (int, float), 1.0)
    if not 0.25 <= float(speed) <= 4.0:
        raise BadRequest("speed must be between 0.25 and 4.0")
    response_format = field(body, "response_format", str, "wav")
    if response_format not in SPEECH_FORMATS:
        raise BadRequest(f"response_format {response_format!r} is not supported here; use one of: pcm, wav")
    return text, float(speed), response_format


async def speech(request: web.Request) -> web.StreamResponse:
    """16-bit mono 24 kHz audio whose length follows the text, streamed in chunks after a first-byte delay."""
    sim = simulator(request)
    text, speed, response_format = _speech_request(await read_json(request))
    fault = injected_fault(request)
    kind = fault.fault if fault is not None else None
    response = web.StreamResponse(status=200, headers={"Content-Type": SPEECH_FORMATS[response_format]})
    if fault is not None and kind is Fault.STALL_FIRST_TOKEN:
        await response.prepare(request)
        await hold(fault.hold_s)
    await asyncio.sleep(sim.settings.tts_first_byte_ms / 1000.0)
    pcm_bytes = audio.pcm_length(text, speed)
    if kind is Fault.GARBAGE_AUDIO:
        chunks = [audio.garbage(pcm_bytes)]
    else:
        chunks = list(audio.pcm_chunks(text, speed))
        if response_format == "wav":
            chunks.insert(0, audio.wav_header(pcm_bytes))
    chunk_interval = 1.0 / fault.tokens_per_s if fault is not None and kind is Fault.SLOW_TOKENS else 0.0
    try:
        await response.prepare(request)
        for index, chunk in enumerate(chunks):
            if fault is not None and index == fault.after_tokens:
                if kind is Fault.RESET_MID_STREAM:
                    abort(request)
                    return response
                if kind is Fault.TRUNCATED:
                    break
            if index and chunk_interval:
                await asyncio.sleep(chunk_interval)
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass
    return response


async def embeddings(request: web.Request) -> web.Response:
    sim = simulator(request)
    body = await read_json(request)
    name = field(body, "model", str)
    if not name:
        raise BadRequest("you must provide a model parameter")
    if sim.resolve_model(name) is None:
        raise BadRequest(f"model '{name}' not found", 404, kind="invalid_request_error")
    inputs = embedding_inputs(body.get("input"))
    if inputs is None:
        raise BadRequest("invalid input type")
    data = [{"object": "embedding", "embedding": embedding(text), "index": i} for i, text in enumerate(inputs)]
    return json_answer({"object": "list", "data": data, "model": name})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/audio/speech", speech)
