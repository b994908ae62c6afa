"""The simulator's own control API under /sim/: statistics, reset, fault injection, live settings."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from voicelane.sim.bodies import BadRequest, json_answer, read_json, simulator
from voicelane.sim.faults import FaultSpec
from voicelane.sim.state import ConfigPatch


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


async def stats(request: web.Request) -> web.Response:
    return json_answer(simulator(request).stats())


async def reset(request: web.Request) -> web.Response:
    sim = simulator(request)
    sim.reset()
    return json_answer(sim.stats())


async def arm_fault(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        spec = FaultSpec.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_problems(exc)) from None
    armed = simulator(request).faults.arm(spec)
    return json_answer({"armed": armed.describe()})


async def list_faults(request: web.Request) -> web.Response:
    return json_answer({"armed": simulator(request).faults.armed()})


async def clear_faults(request: web.Request) -> web.Response:
    simulator(request).faults.clear()
    return json_answer({"armed": []})


async def get_config(request: web.Request) -> web.Response:
    return json_answer(simulator(request).config_view())


async def set_config(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        patch = ConfigPatch.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_problems(exc)) from None
    sim = simulator(request)
    sim.apply(patch)
    return json_answer(sim.config_view())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sim/stats", stats)
    app.router.add_post("/sim/reset", reset)
    app.router.add_get("/sim/faults", list_faults)
    app.router.add_post("/sim/faults", arm_fault)
    app.router.add_delete("/sim/faults", clear_faults)
    app.router.add_get("/sim/config", get_config)
    app.router.add_post("/sim/config", set_config)
