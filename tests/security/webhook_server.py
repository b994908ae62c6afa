"""The operator's injection webhook served in-process over plain HTTP, for tests of what it does with its input.

The server is the operator's own (`InjectionWebhookServer`, on kopf's aiohttp server); behind it,
instead of kopf's admission machinery, a stand-in calls the operator's own mutating handler (with a
lane `voice` in namespace `apps` that exists) as kopf does, and answers as kopf does. It runs on an event loop of its own in a thread, so
that synchronous tests (hypothesis among them) can call it; every log record of the process is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from voicelane.operator.webhook import InjectionWebhookServer, mutate_handler
from voicelane.processes import free_port

LANE = {
    "apiVersion": "voicelane.dev/v1alpha1",
    "kind": "VoiceLane",
    "metadata": {"name": "voice", "namespace": "apps"},
    "spec": {
        "fast": {"model": "llama3.2:1b", "resources": {"cpu": 1, "memory": "2Gi"}},
        "deep": {"model": "llama3.1:8b", "resources": {"cpu": 3, "memory": "10Gi"}},
    },
}


async def get_lane(namespace: str, name: str) -> Mapping[str, Any] | None:
    return LANE if (namespace, name) == ("apps", "voice") else None


MUTATE_POD = mutate_handler(get_lane, image="registry.example/voicelane:1")


async def decide(request: dict[str, Any], **_: Any) -> dict[str, Any]:
    """What kopf's admission function does with a review: the mutating handler on its object, then the answer."""
    review = request["request"]
    body = kopf.Body(review.get("object") or review.get("oldObject"))
    warnings: list[str] = []
    await MUTATE_POD(
        body=body, patch=kopf.Patch(body=body), warnings=warnings, logger=logging.getLogger("kopf.objects")
    )
    return {
        "apiVersion": request["apiVersion"],
        "kind": "AdmissionReview",
        "response": {"uid": review["uid"], "allowed": True, "warnings": warnings},
    }


# A pod admission review as the API server sends it: a pod of the lane "voice", opted in.
REVIEW: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "0b4f6f4e-review",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "apps",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-", "labels": {"app": "web", "voicelane.dev/lane": "voice"}},
            "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
        },
    },
}


class KeptRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class InProcessWebhook:
    url: str  # POST reviews here
    port: int
    log: KeptRecords

    def records_since(self, mark: int) -> list[logging.LogRecord]:
        return self.log.records[mark:]

    def mark(self) -> int:
        return len(self.log.records)


@contextlib.contextmanager
def serving_webhook() -> Iterator[InProcessWebhook]:
    port = free_port()
    server = InjectionWebhookServer(addr="127.0.0.1", port=port, insecure=True)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    url: list[str] = []

    async def serve() -> None:
        serving = server(decide)
        try:
            config = await anext(serving)
            url.append(str(config["url"]).rstrip("/") + "/mutate-pods")
            ready.set()
            await stop.wait()
        finally:
            await serving.aclose()

    kept = KeptRecords()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(kept)
    root.setLevel(logging.DEBUG)
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout=10), "the webhook did not start"
        yield InProcessWebhook(url[0], port, kept)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
        root.removeHandler(kept)
        root.setLevel(previous_level)
