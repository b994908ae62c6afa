"""The operator: reconciles VoiceLane resources into warm, reserved fast and deep Ollama lanes."""
