"""OpenAI-compatible chat: `POST /v1/chat/completions` streaming SSE, health via `GET /v1/models`."""

from __future__ import annotations

from typing import Any

from voicelane.sidecar.upstream.base import ChatRequest
from voicelane.sidecar.upstream.decoding import OpenAIChatDecoder, StreamDecoder
from voicelane.sidecar.upstream.transport import HttpUpstreamClient


class OpenAIClient(HttpUpstreamClient):
    chat_path = "/v1/chat/completions"
    health_path = "/v1/models"

    def headers(self) -> dict[str, str]:
        if self.config.api_key:
            return {"Authorization": f"Bearer {self.config.api_key}"}
        return {}

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        config = self.config
        stop = config.stop if request.stop is None else request.stop
        body: dict[str, Any] = {
            "model": request.model or config.model,
            "messages": [dict(message) for message in request.messages],
            "stream": True,
            "max_tokens": config.num_predict if request.num_predict is None else request.num_predict,
            "temperature": config.temperature if request.temperature is None else request.temperature,
        }
        if stop:
            body["stop"] = list(stop)
        return body

    def decoder(self) -> StreamDecoder:
        return OpenAIChatDecoder()

    def health_ok(self, payload: object) -> bool:
        return isinstance(payload, dict) and isinstance(payload.get("data"), list)
