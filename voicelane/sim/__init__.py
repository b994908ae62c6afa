"""An Ollama/OpenAI upstream simulator with a latency model, for tests and benchmarks."""
