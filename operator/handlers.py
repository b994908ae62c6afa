"""kopf handlers that keep every VoiceLane's children and status in line with its spec.

The handlers are thin. A lane's create/resume/update calls `LaneReconciler.reconcile` (errors go
back to kopf, which retries); the periodic resync and every event on a child (watched by the
`voicelane.dev/lane` label, server-side) call `LaneReconciler.kick`, which coalesces bursts so a
lane is reconciled once per burst and retries failures with backoff itself. A reconcile renders the
desired children (render.py), lists the live ones, carries out the steps apply.py decides with the
official kubernetes client (server-side apply under one field manager; apply.py says when a child
needs no write at all), computes the status with status.py, writes it when it changed, and posts
Events for what a user would want to know. Reconciles of one lane never overlap, and at most
`LaneReconciler.MAX_RECONCILING` lanes are reconciled at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import kopf
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from voicelane.operator import render
from voicelane.operator.api import SpecError
from voicelane.operator.apply import (
    CHILD_RESOURCES,
    FIELD_MANAGER,
    LANE_RESOURCE,
    ApiResource,
    Applied,
    ChildKey,
    Step,
    Verb,
    child_key,
    is_controller_conflict,
    plan_child,
    plan_children,
)
from voicelane.operator.metrics import OperatorMetrics
from voicelane.operator.status import Problem, condition_of, lane_status, owned_part, true_conditions

logger = logging.getLogger("voicelane.operator")

RESYNC_INTERVAL_S = 60.0  # the safety net for drift no watch event reported
MAX_RETRY_DELAY_S = 30.0
LANE = (LANE_RESOURCE.group, LANE_RESOURCE.version, LANE_RESOURCE.plural)
LaneKey = tuple[str, str]  # (namespace, name)
Body = dict[str, Any]


class EventPoster(Protocol):
    def __call__(self, lane: Mapping[str, Any], type: str, *, reason: str, message: str) -> None: ...


registry = kopf.OperatorRegistry()


# --- the API client ----------------------------------------------------------------------------


class TransientApiError(Exception):
    """The API server failed or could not be reached; the same reconcile may succeed later."""


class KubeApi:
    """Generic JSON calls through the official kubernetes client, each run in a worker thread.

    The generated typed APIs return models and cover only built-in kinds; the operator handles
    every child kind as plain dicts, so it calls the resource paths directly.
    """

    # Requests in flight at once; the client's connection pool is sized to match (main.py). asyncio's
    # default executor has os.cpu_count() + 4 threads, which on a small node serialises a burst of lanes.
    MAX_IN_FLIGHT = 16

    def __init__(self, client: ApiClient, *, timeout_s: tuple[float, float] = (5.0, 30.0)) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(self.MAX_IN_FLIGHT, thread_name_prefix="kube-api")

    async def get(self, path: str) -> Body | None:
        try:
            return await self._call("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list_objects(self, path: str, *, label_selector: str) -> list[Body]:
        response = await self._call("GET", path, query=[("labelSelector", label_selector)])
        items: list[Body] = response.get("items") or []
        kind = str(response.get("kind", "")).removesuffix("List")
        for item in items:  # list items may omit their own kind and apiVersion
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", response.get("apiVersion"))
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> Body:
        return await self._call("POST", path, body=body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> Body | None:
        """A JSON merge patch (lane status, a child's one-off upgrade); None when the object is gone."""
        try:
            return await self._call("PATCH", path, body=body, content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, path: str, body: Mapping[str, Any], *, dry_run: bool = False) -> Body:
        """Server-side apply `body` as FIELD_MANAGER, taking over fields others hold (force).

        A dry run is judged by the API server (admission, defaults, field ownership) but not stored.
        """
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        # A JSON body is valid YAML, which the apply patch type takes.
        return await self._call("PATCH", path, body=body, query=query, content_type="application/apply-patch+yaml")

    async def delete(self, path: str) -> None:
        with contextlib.suppress(ApiException):  # a 404 means done; others surface on the next resync
            await self._call("DELETE", path, body={"propagationPolicy": "Background"})

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> Body:
        try:
            call = functools.partial(self._call_blocking, method, path, body, list(query), content_type)
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except ApiException as exc:
            # Server trouble, throttling and write conflicts pass; AlreadyExists is an answer.
            conflict = exc.status == 409 and _api_reason(exc) != "AlreadyExists"
            if exc.status is None or exc.status >= 500 or exc.status == 429 or conflict:
                raise TransientApiError(f"{method} {path}: {exc.status} {_api_message(exc)}") from exc
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientApiError(f"{method} {path}: {exc}") from exc

    def _call_blocking(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        query: list[tuple[str, str]],
        content_type: str,
    ) -> Body:
        method, url, headers, payload, _ = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=self.timeout_s
        )
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(data) if data else {}


# --- reconciling a lane ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: str  # applied | unchanged | invalid | error (the metric's label)
    message: str = ""


class LaneReconciler:
    """Reconciles lanes one at a time each; see the module docstring for what a reconcile does."""

    # Lanes reconciled at once; the others wait their turn. Twice the API requests in flight keeps the
    # API client busy, while a burst of lanes no longer holds every lane's rendering, listing and
    # answers in memory at the same time, and the first lanes get their status before the last ones
    # are written.
    MAX_RECONCILING = 2 * KubeApi.MAX_IN_FLIGHT

    def __init__(
        self,
        api: KubeApi,
        metrics: OperatorMetrics,
        *,
        operator_namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        post_event: EventPoster | None = None,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.operator_namespace = operator_namespace
        self.clock = clock
        self.post_event: EventPoster = post_event or post_kopf_event
        self._locks: dict[LaneKey, asyncio.Lock] = {}
        self._running = asyncio.Semaphore(self.MAX_RECONCILING)
        self._queued: set[LaneKey] = set()
        self._failures: dict[LaneKey, int] = {}
        # Until when a failed lane waits before its retry (kopf's or a kick's); kicks meanwhile wait for it.
        self._backoff_until: dict[LaneKey, float] = {}
        self._retries: set[asyncio.Task[None]] = set()
        # The resourceVersion of each child as our last write left it: the watch event that
        # echoes our own write is no news and needs no reconcile.
        self._written: dict[ChildKey, str] = {}
        # Per lane, what the last apply (or a verified dry run) of each child left: with it, an
        # unchanged child needs no request at all (see apply.py).
        self._applied: dict[LaneKey, dict[ChildKey, Applied]] = {}

    async def reconcile(self, key: LaneKey) -> Outcome:
        """Reconcile now (after any running reconcile of the lane); TransientApiError propagates."""
        async with self._lock(key):
            try:
                outcome = await self._timed(key)
            except (TransientApiError, ApiException):
                self._back_off(key)  # the caller (kopf) retries
                raise
            self._recovered(key)
            return outcome

    async def kick(self, key: LaneKey, *, retry: bool = False) -> None:
        """Reconcile soon; a kick while another waits its turn is absorbed by that one.

        So is a kick while the lane waits out the backoff of a failure: its retry is due then. (The
        watch events of the children a failing reconcile wrote would otherwise retry it at once.)
        """
        if key in self._queued:
            return
        self._queued.add(key)
        async with self._lock(key):
            self._queued.discard(key)
            if not retry and self.clock() < self._backoff_until.get(key, -math.inf):
                return
            try:
                await self._timed(key)
            except (TransientApiError, ApiException) as exc:
                self._retry_later(key, exc)
            else:
                self._recovered(key)

    def is_echo(self, child: Mapping[str, Any]) -> bool:
        """Whether a child's watch event only reports the state our own last write left."""
        metadata = child.get("metadata") or {}
        return self._written.get(child_key(child)) == metadata.get("resourceVersion")

    def forget(self, child: Mapping[str, Any]) -> None:
        self._written.pop(child_key(child), None)

    def forget_lane(self, key: LaneKey) -> None:
        """Drop what is kept about a deleted lane (its children's echoes go with their events)."""
        self.metrics.forget_lane(key)
        self._applied.pop(key, None)
        self._recovered(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and key not in self._queued:
            del self._locks[key]

    def retry_delay(self, attempt: int) -> float:
        return float(min(MAX_RETRY_DELAY_S, 2 ** min(attempt, 10) * 0.5))

    def _back_off(self, key: LaneKey) -> float:
        """Count a failure of the lane; returns the delay before its retry."""
        attempt = self._failures.get(key, 0)
        self._failures[key] = attempt + 1
        delay = self.retry_delay(attempt)
        self._backoff_until[key] = self.clock() + delay
        return delay

    def _recovered(self, key: LaneKey) -> None:
        self._failures.pop(key, None)
        self._backoff_until.pop(key, None)

    def _retry_later(self, key: LaneKey, exc: Exception) -> None:
        delay = self._back_off(key)
        logger.warning("Reconciling %s/%s failed (%s); retrying in %.1f s.", *key, exc, delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.kick(key, retry=True)

        task = asyncio.get_running_loop().create_task(later())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _lock(self, key: LaneKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _timed(self, key: LaneKey) -> Outcome:
        async with self._running:
            started = self.clock()
            outcome = Outcome("error")
            try:
                outcome = await self._reconcile(key)
                return outcome
            finally:
                self.metrics.observe_reconcile(outcome.result, self.clock() - started)

    async def _reconcile(self, key: LaneKey) -> Outcome:
        namespace, name = key
        lane = await self.api.get(LANE_RESOURCE.object_path(namespace, name))
        if lane is None:
            self.metrics.forget_lane(key)
            self._applied.pop(key, None)
            return Outcome("unchanged", "the lane is gone")
        if lane["metadata"].get("deletionTimestamp"):
            return Outcome("unchanged", "the lane is being deleted; garbage collection removes its children")
        live = await self._live_children(lane)
        try:
            desired = render.render_children(lane, operator_namespace=self.operator_namespace)
            warnings = _tier_warnings(lane)
        except SpecError as exc:
            invalid = Problem("InvalidSpec", str(exc))
            await self._publish_status(lane, lane_status(lane, live, [], problem=invalid))
            return Outcome("invalid", invalid.message)

        owner_uid = str(lane["metadata"]["uid"])
        known = self._applied.get(key, {})
        steps = plan_children(desired, live, owner_uid=owner_uid, applied=known)
        wanted = {child_key(obj): obj for obj in desired}
        listed = {child_key(obj): obj for obj in live}
        applied: dict[ChildKey, Applied] = {}
        children: list[Body] = []
        done: list[Step] = []
        problem: Problem | None = None

        async def perform(step: Step) -> tuple[Body | None, Applied | None, Step] | ApiException:
            child = (step.resource.kind, step.namespace, step.name)
            try:
                result, performed = await self._perform(
                    step, wanted.get(child), listed.get(child), owner_uid=owner_uid, known=known.get(child)
                )
            except ApiException as exc:  # a refusal (4xx): shown in the status; the others go on
                return exc
            if result is None:
                return None, None, performed
            # Of the answer (a Deployment's runs to tens of kilobytes as dicts) only what is read later is
            # kept while the other children's writes finish: a burst of lanes' answers adds up.
            made = Applied.of(result, wanted[child]) if child in wanted else None
            return status_view(result), made, performed

        # The children do not depend on one another: write them at once (a lane's first reconcile is
        # eight round trips in parallel, not in a row), then read the answers in the renderer's order.
        outcomes = await asyncio.gather(*(perform(step) for step in steps))
        for step, outcome in zip(steps, outcomes, strict=True):
            child = (step.resource.kind, step.namespace, step.name)
            if isinstance(outcome, ApiException):
                problem = Problem("ApplyFailed", f"{step.verb} {step.title}: {_api_message(outcome)}")
                continue
            result, made, performed = outcome
            if performed.verb == Verb.CONFLICT:
                problem = Problem("ChildConflict", performed.message)
            if performed.verb in (Verb.CREATE, Verb.APPLY, Verb.DELETE):
                done.append(performed)
            if result is None:
                continue
            children.append(result)
            if performed.verb in (Verb.CREATE, Verb.APPLY):
                self._written[child] = str(result["metadata"].get("resourceVersion"))
            if made is not None:
                applied[child] = made
        self._applied[key] = applied
        status = lane_status(lane, children, warnings, problem=problem)
        self._post_change_events(lane, done)
        await self._publish_status(lane, status)
        return Outcome("applied" if done else "unchanged")

    async def _perform(
        self,
        step: Step,
        desired: Mapping[str, Any] | None,
        current: Body | None,
        *,
        owner_uid: str,
        known: Applied | None,
    ) -> tuple[Body | None, Step]:
        """Carry out one step; returns the child as it now is (None once deleted) and what was done.

        The preliminary steps (read, upgrade, dry run) each end in a fresh plan for the child, so only
        KEEP, CONFLICT, DELETE, CREATE and APPLY come back.
        """
        path = step.resource.object_path(step.namespace, step.name)
        if step.verb == Verb.DELETE:
            await self.api.delete(path)
            return None, step
        assert desired is not None
        if step.verb == Verb.UPGRADE:
            assert step.body is not None
            current = await self.api.patch(path, step.body)  # None: deleted meanwhile
            logger.info("Moved %s to server-side apply (field manager %s).", step.title, FIELD_MANAGER)
            step = plan_child(desired, current, owner_uid=owner_uid, applied=None)
        if step.verb == Verb.DRY_RUN:
            rehearsal = await self.api.apply(path, desired, dry_run=True)
            step = plan_child(desired, current, owner_uid=owner_uid, applied=Applied.of(rehearsal, desired))
        if step.verb == Verb.KEEP:
            return current, step
        if step.verb == Verb.CONFLICT:
            return None, step
        try:
            result = await self.api.apply(path, desired)
        except ApiException as exc:
            if step.verb == Verb.CREATE and is_controller_conflict(exc.status, _api_message(exc)):
                message = f"{step.title} exists and is controlled by another owner"
                return None, dataclasses.replace(step, verb=Verb.CONFLICT, message=message)
            raise
        version = result["metadata"].get("resourceVersion")
        if current is not None and version == current["metadata"].get("resourceVersion"):
            return result, dataclasses.replace(step, verb=Verb.KEEP)  # the API server had nothing to change
        return result, step

    async def _live_children(self, lane: Mapping[str, Any]) -> list[Body]:
        namespace, name = lane["metadata"]["namespace"], lane["metadata"]["name"]
        selector = f"{render.LABEL_LANE}={name}"
        listed = await asyncio.gather(
            *(
                self.api.list_objects(resource.collection_path(namespace), label_selector=selector)
                for resource in CHILD_RESOURCES
            )
        )
        return [obj for objs in listed for obj in objs]

    async def _publish_status(self, lane: Mapping[str, Any], status: Body) -> None:
        namespace, name = lane["metadata"]["namespace"], lane["metadata"]["name"]
        before = owned_part(lane.get("status"))
        self.metrics.observe_lane((namespace, name), true_conditions(status))
        self._post_condition_events(lane, before, status)
        if before == status:
            return
        removed = {key: None for key in before if key not in status}
        path = LANE_RESOURCE.object_path(namespace, name, "status")
        await self.api.patch(path, {"status": {**status, **removed}})

    def _post_change_events(self, lane: Mapping[str, Any], done: Sequence[Step]) -> None:
        if not done:
            return
        generation = lane["metadata"].get("generation")
        drift = (lane.get("status") or {}).get("observedGeneration") == generation
        words = {Verb.CREATE: "created", Verb.APPLY: "updated", Verb.DELETE: "deleted"}
        parts = []
        for step in done:
            fields = f" ({', '.join(step.changed[:4])}{', …' if len(step.changed) > 4 else ''})" if step.changed else ""
            parts.append(f"{words.get(step.verb, step.verb)} {step.title}{fields}")
        logger.info("[%s/%s] %s", lane["metadata"]["namespace"], lane["metadata"]["name"], "; ".join(parts))
        if drift:
            self.post_event(lane, "Normal", reason="DriftCorrected", message="Restored children: " + "; ".join(parts))
        else:
            self.post_event(lane, "Normal", reason="Applied", message=f"Generation {generation}: " + "; ".join(parts))

    def _post_condition_events(
        self, lane: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        was_ready = condition_of(before, "Ready").get("status")
        ready = condition_of(after, "Ready")
        if ready.get("status") == "True" and was_ready != "True":
            self.post_event(lane, "Normal", reason="LaneReady", message=ready.get("message", ""))
        elif ready.get("status") != "True" and was_ready == "True":
            self.post_event(lane, "Warning", reason="LaneNotReady", message=ready.get("message", ""))
        degraded, was_degraded = condition_of(after, "Degraded"), condition_of(before, "Degraded")
        changed = (degraded.get("reason"), degraded.get("message")) != (
            was_degraded.get("reason"),
            was_degraded.get("message"),
        )
        if degraded.get("status") == "True" and changed:
            self.post_event(
                lane, "Warning", reason=str(degraded.get("reason")), message=str(degraded.get("message", ""))
            )


def status_view(child: Mapping[str, Any]) -> Body:
    """What status.py reads of a child (its kind, labels, generation, replicas and status) and what the
    reconciler reads (its resourceVersion), and no more."""
    metadata = child.get("metadata") or {}
    view: Body = {
        "apiVersion": child.get("apiVersion"),
        "kind": child.get("kind"),
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "resourceVersion", "generation", "labels")
            if key in metadata
        },
    }
    replicas = (child.get("spec") or {}).get("replicas")
    if replicas is not None:
        view["spec"] = {"replicas": replicas}
    if "status" in child:
        view["status"] = child["status"]
    return view


def post_kopf_event(lane: Mapping[str, Any], type: str, *, reason: str, message: str) -> None:
    # kopf.event, not kopf.info: the operator's posting level (WARNING) filters kopf.info out,
    # which keeps kopf's own "handler succeeded" chatter off the lanes and their children.
    # kopf's signature wants its Body wrapper; it takes a raw object as well.
    kopf.event(cast(Any, lane), type=type, reason=reason, message=message)


def _tier_warnings(lane: Mapping[str, Any]) -> list[str]:
    return list(render.tier_warnings(lane.get("spec") or {}))


def _api_reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("reason") or "")
    except ValueError:
        return ""


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return f"{exc.status} {exc.reason}"


# --- kopf wiring -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OperatorMemo:
    """What every handler gets as `memo`: the reconciler, the metrics and the login to the API."""

    reconciler: LaneReconciler
    metrics: OperatorMetrics
    login: Callable[[], kopf.ConnectionInfo]


@kopf.on.login(registry=registry)
def login(memo: OperatorMemo, **_: Any) -> kopf.ConnectionInfo:
    return memo.login()


@kopf.on.probe(id="lanes", registry=registry)
def lanes_probe(memo: OperatorMemo, **_: Any) -> int:
    return memo.metrics.lane_count


@kopf.on.resume(*LANE, registry=registry)
@kopf.on.create(*LANE, registry=registry)
@kopf.on.update(*LANE, registry=registry)
async def reconcile_lane(namespace: str | None, name: str, memo: OperatorMemo, retry: int, **_: Any) -> None:
    try:
        outcome = await memo.reconciler.reconcile((namespace or "", name))
    except TransientApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=memo.reconciler.retry_delay(retry)) from exc
    except ApiException as exc:
        raise kopf.TemporaryError(_api_message(exc), delay=memo.reconciler.retry_delay(retry)) from exc
    if outcome.result == "invalid":
        # Retrying cannot help; the condition and Event say what to fix, the next edit retries.
        raise kopf.PermanentError(f"invalid spec: {outcome.message}")


@kopf.timer(*LANE, interval=RESYNC_INTERVAL_S, initial_delay=RESYNC_INTERVAL_S, registry=registry)
async def resync_lane(namespace: str | None, name: str, memo: OperatorMemo, **_: Any) -> None:
    await memo.reconciler.kick((namespace or "", name))


@kopf.on.event(*LANE, registry=registry)
def lane_event(type: str, namespace: str | None, name: str, memo: OperatorMemo, **_: Any) -> None:
    if type == "DELETED":
        memo.reconciler.forget_lane((namespace or "", name))


async def child_event(
    type: str | None,
    body: Mapping[str, Any],
    namespace: str | None,
    labels: Mapping[str, str],
    memo: OperatorMemo,
    **_: Any,
) -> None:
    # The initial listing is covered by the lanes' resume handlers; later events mean a change,
    # unless they merely echo the reconciler's own write.
    if type is None:
        return
    if type == "DELETED":
        memo.reconciler.forget(body)
    elif memo.reconciler.is_echo(body):
        return
    await memo.reconciler.kick((namespace or "", labels[render.LABEL_LANE]))


def _watch_children(resources: Sequence[ApiResource]) -> None:
    for resource in resources:
        kopf.on.event(
            resource.group,
            resource.version,
            resource.plural,
            id=f"child_event/{resource.plural}",
            labels={render.LABEL_LANE: kopf.PRESENT},
            registry=registry,
        )(child_event)


_watch_children(CHILD_RESOURCES)
