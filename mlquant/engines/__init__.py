"""Serving engines: models behind an inference server (an OpenAI-compatible HTTP endpoint, vLLM)."""
