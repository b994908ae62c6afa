"""The simulated Ollama API: chat, generate, embed, version, tags, ps, pull and show, in Ollama's wire format."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

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
from voicelane.sim.catalog import ModelInfo, canonical_name
from voicelane.sim.latency import parse_keep_alive
from voicelane.sim.playback import GenerationPlan, play
from voicelane.sim.replies import (
    choose_text,
    content_text,
    count_tokens,
    embedding,
    embedding_inputs,
    generate_reply,
    last_user_content,
)
from voicelane.sim.state import ServerBusy, Simulator
from voicelane.sim.wire import BUSY_MESSAGE, SIM_VERSION, OllamaDialect, dumps, ollama_error, timestamp

# What `expires_at` shows for a model kept forever (keep_alive < 0): far in the future, as Ollama does.
_FOREVER_S = 300 * 365 * 86400.0


def _model_info(sim: Simulator, body: dict[str, Any]) -> tuple[str, ModelInfo]:
    name = field(body, "model", str) or field(body, "name", str)
    if not name:
        raise BadRequest("model is required")
    info = sim.resolve_model(name)
    if info is None:
        raise BadRequest(f"model '{name}' not found", 404)
    return name, info


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = field(body, "options", dict, {})
    return options if isinstance(options, dict) else {}


def _keep_alive(body: dict[str, Any]) -> float:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def _generation(request: web.Request, *, chat: bool) -> web.StreamResponse:
    sim = simulator(request)
    body = await read_json(request)
    name, info = _model_info(sim, body)
    keep_alive_s = _keep_alive(body)
    stream = field(body, "stream", bool, True)
    options = _options(body)
    num_predict = field(options, "num_predict", int)
    stop = string_list(options.get("stop"), "options.stop")
    dialect = OllamaDialect(name, chat=chat, wall_clock=sim.wall_clock)
    if chat:
        messages = messages_field(body, required=False)
        prompt_texts = [content_text(m.get("content")) for m in messages]
        prompt_text = last_user_content(messages)
        load_only = not messages
    else:
        prompt = field(body, "prompt", str, "")
        prompt_texts = [field(body, "system", str, "") or "", prompt]
        prompt_text = prompt
        load_only = not prompt
    if load_only:
        return await _load_or_unload(sim, info, dialect, keep_alive_s)
    text = choose_text(sim.settings.reply, sim.settings.reply_text, prompt_text)
    plan = GenerationPlan(
        model=info.name,
        reply=generate_reply(text, max_tokens=num_predict, stop=stop),
        prompt_tokens=count_tokens(prompt_texts),
        keep_alive_s=keep_alive_s,
        stream=stream,
        max_tokens=num_predict,
    )
    try:
        return await play(request, sim, dialect, plan, injected_fault(request))
    except ServerBusy:
        return json_answer(ollama_error(BUSY_MESSAGE), 503)


async def _load_or_unload(sim: Simulator, info: ModelInfo, dialect: OllamaDialect, keep_alive_s: float) -> web.Response:
    """A call without messages/prompt only loads the model (or unloads it when keep_alive is 0)."""
    if keep_alive_s == 0:
        sim.residency.unload(info.name)
        return json_answer(dialect.control("unload"))
    await asyncio.sleep(sim.residency.begin(info.name, sim.settings.profile.load_s))
    sim.residency.end(info.name, keep_alive_s)
    return json_answer(dialect.control("load"))


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=False)


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return json_answer({"version": SIM_VERSION})


def _listing(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "model": info.name,
        "modified_at": timestamp(info.modified_at),
        "size": info.size,
        "digest": info.digest,
        "details": info.details(),
    }


async def tags(request: web.Request) -> web.Response:
    return json_answer({"models": [_listing(info) for info in simulator(request).catalog.all()]})


async def ps(request: web.Request) -> web.Response:
    sim = simulator(request)
    now_mono, now_wall = sim.clock(), sim.wall_clock()
    models = []
    for name, expires in sim.residency.loaded().items():
        info = sim.catalog.find(name) or ModelInfo(name, now_wall)
        remaining = _FOREVER_S if math.isinf(expires) else expires - now_mono
        models.append(
            {
                **_listing(info),
                "expires_at": timestamp(now_wall + remaining),
                "size_vram": info.size,
                "context_length": 4096,
            }
        )
    return json_answer({"models": models})


async def show(request: web.Request) -> web.Response:
    sim = simulator(request)
    _, info = _model_info(sim, await read_json(request))
    return json_answer(
        {
            "modelfile": f"FROM {info.name}\n",
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": info.details(),
            "model_info": {"general.architecture": info.family, "general.parameter_count": info.size},
            "capabilities": ["completion"],
            "modified_at": timestamp(info.modified_at),
        }
    )


async def embed(request: web.Request) -> web.Response:
    sim = simulator(request)
    body = await read_json(request)
    name, _ = _model_info(sim, body)
    inputs = embedding_inputs(body.get("input"))
    if inputs is None:
        raise BadRequest("invalid input type")
    return json_answer({"model": name, "embeddings": [embedding(text) for text in inputs]})


async def pull(request: web.Request) -> web.StreamResponse:
    """Streams progress lines like Ollama's and ends with {"status": "success"}; the model is then listed."""
    sim = simulator(request)
    body = await read_json(request)
    name = field(body, "model", str) or field(body, "name", str)
    if not name:
        raise BadRequest("model is required")
    info = ModelInfo(canonical_name(name), sim.wall_clock())
    digest = f"sha256:{info.digest}"
    total = info.size
    steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    steps += [
        {
            "status": f"pulling {info.digest[:12]}",
            "digest": digest,
            "total": total,
            "completed": total * k // 4,
        }
        for k in range(5)
    ]
    steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
    if not field(body, "stream", bool, True):
        await asyncio.sleep(0.001 * len(steps))
        sim.catalog.add(name, now=sim.wall_clock())
        return json_answer({"status": "success"})
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for step in steps:
        if step["status"] == "success":
            sim.catalog.add(name, now=sim.wall_clock())
        await response.write(dumps(step) + b"\n")
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
