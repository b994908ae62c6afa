"""The real local model stack: Ollama built from its Go module, serving the shipped small model on 127.0.0.1."""
