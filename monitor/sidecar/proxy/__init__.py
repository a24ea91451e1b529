"""The OpenAI-compatible (and Ollama) capture proxy: forwards every byte, records one GenAI span per request."""
