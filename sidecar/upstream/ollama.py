"""Ollama's native chat API: `POST /api/chat` streaming NDJSON, health via `GET /api/version`."""

from __future__ import annotations

from typing import Any

from voicelane.sidecar.upstream.base import ChatRequest
from voicelane.sidecar.upstream.decoding import OllamaChatDecoder, StreamDecoder
from voicelane.sidecar.upstream.transport import HttpUpstreamClient


class OllamaClient(HttpUpstreamClient):
    chat_path = "/api/chat"
    health_path = "/api/version"

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        config = self.config
        stop = config.stop if request.stop is None else request.stop
        return {
            "model": request.model or config.model,
            "messages": [dict(message) for message in request.messages],
            "stream": True,
            "keep_alive": request.keep_alive if request.keep_alive is not None else config.keep_alive,
            # Reasoning models would otherwise spend the time to first token thinking silently.
            "think": False,
            "options": {
                "temperature": config.temperature if request.temperature is None else request.temperature,
                "num_predict": config.num_predict if request.num_predict is None else request.num_predict,
                "stop": list(stop),
            },
        }

    def decoder(self) -> StreamDecoder:
        return OllamaChatDecoder()

    def health_ok(self, payload: object) -> bool:
        return isinstance(payload, dict) and isinstance(payload.get("version"), str)
