"""Clients for the model servers behind the sidecar: Ollama's native API and OpenAI-compatible servers."""

from voicelane.sidecar.upstream.base import (
    ChatRequest,
    ErrorKind,
    UpstreamClient,
    UpstreamError,
    make_client,
)

__all__ = ["ChatRequest", "ErrorKind", "UpstreamClient", "UpstreamError", "make_client"]
