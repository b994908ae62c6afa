"""Text-to-speech backends: espeak-ng in process (the default) and OpenAI-compatible speech servers."""

from voicelane.sidecar.tts.base import SpeechRequest, TTSBackend, TTSError, make_backend

__all__ = ["SpeechRequest", "TTSBackend", "TTSError", "make_backend"]
